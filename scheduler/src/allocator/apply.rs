//! Carries a [`Plan`] out through the API: creates one by one (as Spark does), deletes as one
//! delete-collection per round by `spark-exec-id in (...)` (as Spark's allocator and
//! `doKillExecutors` do), lookups by name. Every call has a timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use tokio::time::Instant;

use super::{Allocator, Created, Plan};
use crate::ids::ExecutorId;
use crate::metrics::{api_call, api_error, api_timeout};
use crate::pods::{EXEC_ID_LABEL, Factory};

/// The longest one API call may take before we give up on it.
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Ids per delete-collection call, so label selectors stay small.
const IDS_PER_DELETE: usize = 100;

/// Talks to the API on the allocator's behalf.
#[derive(Debug, Clone)]
pub struct Applier {
    api: Api<Pod>,
    factory: Factory,
    kill_grace: Duration,
}

async fn timed<T>(
    verb: &'static str,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Option<kube::Error>> {
    api_call(verb);
    match tokio::time::timeout(API_CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            api_error(verb, &e);
            Err(Some(e))
        }
        Err(_) => {
            api_timeout(verb);
            Err(None)
        }
    }
}

fn lock(a: &Mutex<Allocator>) -> std::sync::MutexGuard<'_, Allocator> {
    a.lock().unwrap_or_else(|e| e.into_inner())
}

impl Applier {
    /// An applier creating pods from `factory` in `api`'s namespace; killed executors get
    /// `kill_grace` (`spark.kubernetes.dynamicAllocation.deleteGracePeriod`).
    pub fn new(api: Api<Pod>, factory: Factory, kill_grace: Duration) -> Self {
        Self {
            api,
            factory,
            kill_grace,
        }
    }

    /// The factory.
    pub fn factory(&self) -> &Factory {
        &self.factory
    }

    /// The pods API.
    pub fn api(&self) -> &Api<Pod> {
        &self.api
    }

    /// Executes a plan, recording outcomes in the allocator.
    pub async fn apply(&self, plan: Plan, allocator: &Arc<Mutex<Allocator>>) {
        if !plan.delete.is_empty() {
            self.delete(&plan.delete, false, None).await;
        }
        if !plan.delete_pending.is_empty() {
            self.delete(&plan.delete_pending, true, None).await;
        }
        for id in plan.verify {
            let name = self.factory.pod_name(id);
            let exists = match timed("get", self.api.get_opt(&name)).await {
                Ok(found) => Some(found.is_some()),
                Err(_) => None,
            };
            lock(allocator).verified(id, exists);
            if exists.is_none() {
                // The API is not answering: the other lookups wait for the next round.
                break;
            }
        }
        let pp = PostParams::default();
        let mut creates = plan.create.into_iter();
        while let Some(id) = creates.next() {
            let pod = self.factory.build(id);
            let outcome = match timed("create", self.api.create(&pp, &pod)).await {
                Ok(_) => {
                    metrics::counter!("kshuffle_scheduler_pods_requested_total").increment(1);
                    tracing::info!(executor = %id, pod = pod.metadata.name.as_deref().unwrap_or_default(), "created executor pod");
                    Created::Yes
                }
                Err(Some(kube::Error::Api(s))) if s.code == 409 => Created::Yes,
                Err(Some(kube::Error::Api(s))) if (400..500).contains(&s.code) => {
                    tracing::warn!(executor = %id, code = s.code, reason = %s.reason, message = %s.message, "executor pod refused");
                    Created::Refused
                }
                Err(_) => Created::Unknown,
            };
            lock(allocator).created(id, outcome, Instant::now());
            if outcome != Created::Yes {
                // As in Spark, a failed create ends the batch; the rest were never sent, so
                // one outage costs one call timeout per round, not one per pod.
                let mut a = lock(allocator);
                for rest in creates.by_ref() {
                    a.not_sent(rest);
                }
                break;
            }
        }
    }

    /// Kills executors: deletes their pods with the kill grace period.
    pub async fn kill(&self, ids: &[ExecutorId]) {
        self.delete(ids, false, Some(self.kill_grace)).await;
    }

    async fn delete(&self, ids: &[ExecutorId], pending_only: bool, grace: Option<Duration>) {
        let mut dp = DeleteParams::default();
        if let Some(g) = grace {
            dp = dp.grace_period(u32::try_from(g.as_secs()).unwrap_or(u32::MAX));
        }
        for chunk in ids.chunks(IDS_PER_DELETE) {
            let list = chunk
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let mut lp = ListParams::default().labels(&format!(
                "{},{EXEC_ID_LABEL} in ({list})",
                self.factory.selector()
            ));
            if pending_only {
                lp = lp.fields("status.phase=Pending");
            }
            if timed("deletecollection", self.api.delete_collection(&dp, &lp))
                .await
                .is_ok()
            {
                metrics::counter!("kshuffle_scheduler_pods_deleted_total")
                    .increment(chunk.len() as u64);
                tracing::info!(executors = %list, pending_only, "deleted executor pods");
            }
        }
    }
}
