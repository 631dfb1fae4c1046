//! The executor pod allocator: from the target and a snapshot of the executor pods, which
//! pods to create and delete this round. Pure (time is passed in); `apply.rs` carries a
//! [`Plan`] out through the API.
//!
//! The rules, after Spark's `ExecutorPodsAllocator.onNewSnapshots` (4.x) unless marked ours:
//! - Pods created but not yet seen in a snapshot (`newlyCreatedExecutors`) are deleted once
//!   older than the pod creation timeout (`max(5 * batch.delay, executor.timeout)`).
//! - New pods are requested only when every earlier request has been seen, in batches of at
//!   most `batch.size`, and only into the slots left under `maxPendingPods` by pods Pending
//!   or requested; executor ids count up from 1 and are never reused.
//! - When more pods exist than the target, requested and Pending pods older than
//!   `executorIdleTimeout` are deleted (Pending only: running executors are the driver's to
//!   kill); younger requests are protected from flapping.
//! - Failed pods count as executor failures (`ExecutorFailureTracker`); past
//!   `spark.executor.maxNumFailures` within `failuresValidityInterval` no more pods are
//!   created (Spark exits the application there; we stop and report it).
//! - Terminated pods are deleted when `deleteOnTermination` (`ExecutorPodsLifecycleManager`).
//! - Ours: a pod still Pending one creation timeout after we first saw it (unschedulable,
//!   image never pulled) is deleted and counted as a failure; Spark leaves it Pending until
//!   the target drops. Its replacement waits for the next round and the pending cap, so at
//!   most `maxPendingPods` pods are retried per timeout: no loop, and the failure limit ends it.
//! - Ours: a create whose outcome is unknown (transport error, 5xx) is not retried under a
//!   new id; the pod is looked up by name until we know, so an outage cannot duplicate pods.

mod apply;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

pub use self::apply::{API_CALL_TIMEOUT, Applier};
use crate::config::Config;
use crate::ids::ExecutorId;
use crate::snapshots::{PodState, Snapshot};

/// The allocator's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `spark.kubernetes.allocation.batch.size`.
    pub batch_size: u32,
    /// `spark.kubernetes.allocation.maxPendingPods`.
    pub max_pending: u32,
    /// `max(5 * batch.delay, executor.timeout)`.
    pub creation_timeout: Duration,
    /// `spark.dynamicAllocation.executorIdleTimeout`: how long new requests are protected.
    pub idle_timeout: Duration,
    /// `spark.kubernetes.executor.deleteOnTermination`.
    pub delete_on_termination: bool,
    /// `spark.executor.maxNumFailures`.
    pub max_failures: u32,
    /// `spark.executor.failuresValidityInterval`.
    pub failures_window: Option<Duration>,
    /// How long a deletion may go unseen before it is asked for again (5 * batch.delay).
    pub delete_retry: Duration,
    /// The lowest executor id to create.
    pub first_executor_id: u64,
}

impl Settings {
    /// From the configuration.
    pub fn from_config(c: &Config) -> Self {
        Self {
            batch_size: c.kubernetes.batch_size,
            max_pending: c.kubernetes.max_pending_pods,
            creation_timeout: c.kubernetes.pod_creation_timeout(),
            idle_timeout: c.dynamic_allocation.executor_idle_timeout,
            delete_on_termination: c.kubernetes.delete_on_termination,
            max_failures: c.kubernetes.max_executor_failures,
            failures_window: c.kubernetes.failures_validity_interval,
            delete_retry: c.kubernetes.batch_delay.saturating_mul(5),
            first_executor_id: c.kubernetes.first_executor_id,
        }
    }
}

/// What one round decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Executors to create pods for, in order.
    pub create: Vec<ExecutorId>,
    /// Executor pods to delete, whatever their phase.
    pub delete: Vec<ExecutorId>,
    /// Executor pods to delete only if still Pending (excess requests).
    pub delete_pending: Vec<ExecutorId>,
    /// Executors whose create had an unknown outcome: look their pods up.
    pub verify: Vec<ExecutorId>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.delete.is_empty()
            && self.delete_pending.is_empty()
            && self.verify.is_empty()
    }
}

/// How a create request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The server created it (or already had it: 409).
    Yes,
    /// The server refused it (4xx): nothing was created.
    Refused,
    /// We do not know (transport error, 5xx, timeout).
    Unknown,
}

/// Counts for metrics and the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// The target.
    pub target: u32,
    /// Pods running.
    pub running: u32,
    /// Pods pending, requested or of unknown outcome.
    pub pending: u32,
    /// Pods failed (still present).
    pub failed: u32,
    /// Failures within the validity window.
    pub recent_failures: u32,
    /// Whether allocation stopped after too many failures.
    pub stopped: bool,
}

/// The allocator's state.
#[derive(Debug)]
pub struct Allocator {
    settings: Settings,
    target: u32,
    next_id: u64,
    initialised: bool,
    newly_created: BTreeMap<ExecutorId, Instant>,
    uncertain: BTreeMap<ExecutorId, Instant>,
    /// Pods we asked to delete: when, and whether only if still Pending.
    deleted: BTreeMap<ExecutorId, (Instant, bool)>,
    pending_since: BTreeMap<ExecutorId, Instant>,
    failed_seen: BTreeSet<ExecutorId>,
    failures: VecDeque<Instant>,
    stopped: bool,
    counts: Counts,
}

impl Allocator {
    /// An allocator with target 0.
    pub fn new(settings: Settings) -> Self {
        let next_id = settings.first_executor_id.max(1);
        Self {
            settings,
            target: 0,
            next_id,
            initialised: false,
            newly_created: BTreeMap::new(),
            uncertain: BTreeMap::new(),
            deleted: BTreeMap::new(),
            pending_since: BTreeMap::new(),
            failed_seen: BTreeSet::new(),
            failures: VecDeque::new(),
            stopped: false,
            counts: Counts::default(),
        }
    }

    /// Sets the total number of executors wanted (`setTotalExpectedExecutors`).
    pub fn set_target(&mut self, total: u32) {
        self.target = total;
        self.counts.target = total;
    }

    /// The target.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// Requests not yet seen in a snapshot (Spark's `numOutstandingPods` minus pending).
    pub fn outstanding(&self) -> usize {
        self.newly_created.len() + self.uncertain.len()
    }

    /// Counts as of the last round.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Marks executors for killing (`doKillExecutors`); returns those to delete. Executors
    /// neither seen nor requested are ignored.
    pub fn kill(&mut self, now: Instant, snap: &Snapshot, ids: &[ExecutorId]) -> Vec<ExecutorId> {
        let mut out = Vec::new();
        for id in ids {
            let known = snap.pods.contains_key(id)
                || self.newly_created.contains_key(id)
                || self.uncertain.contains_key(id);
            if known && self.deleted.insert(*id, (now, false)).is_none() {
                self.newly_created.remove(id);
                self.uncertain.remove(id);
                out.push(*id);
            }
        }
        out
    }

    /// Whether the allocator deleted this executor (Spark's `isDeleted`).
    pub fn is_deleted(&self, id: ExecutorId) -> bool {
        self.deleted.contains_key(&id)
    }

    fn failure(&mut self, now: Instant) {
        self.failures.push_back(now);
        metrics::counter!("kshuffle_scheduler_executor_failures_total").increment(1);
    }

    /// One allocation round at `now` over `snap`.
    pub fn round(&mut self, now: Instant, snap: &Snapshot) -> Plan {
        let mut plan = Plan::default();
        if !snap.synced {
            // Until a complete list is seen we could mistake existing pods for missing ones.
            return plan;
        }
        if !self.initialised {
            self.initialised = true;
            let max = snap.pods.keys().map(|id| id.0).max().unwrap_or(0);
            self.next_id = self.next_id.max(max.saturating_add(1));
        }
        let s = self.settings.clone();
        self.newly_created
            .retain(|id, _| !snap.pods.contains_key(id));
        self.uncertain.retain(|id, _| !snap.pods.contains_key(id));
        // Deletions: forget those done; ask again for those not taking effect (the call may
        // have failed); a pending-only deletion of a pod that started running is void.
        self.deleted
            .retain(|id, (_, pending_only)| match snap.pods.get(id) {
                None => false,
                Some(p) => !(*pending_only && p.state == PodState::Running),
            });
        for (id, (asked, pending_only)) in &mut self.deleted {
            let visible = snap.pods.get(id).is_some_and(|p| p.deleting);
            if !visible && now.saturating_duration_since(*asked) > s.delete_retry {
                *asked = now;
                if *pending_only {
                    plan.delete_pending.push(*id);
                } else {
                    plan.delete.push(*id);
                }
            }
        }

        // Requests never seen: delete (in case they exist unseen) and forget.
        let timed_out: Vec<ExecutorId> = self
            .newly_created
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) > s.creation_timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in timed_out {
            self.newly_created.remove(&id);
            if s.delete_on_termination {
                plan.delete.push(id);
            }
        }
        plan.verify = self
            .uncertain
            .keys()
            .take(usize::try_from(s.batch_size).unwrap_or(usize::MAX))
            .copied()
            .collect();

        // Lifecycle of terminated pods, and classification of the rest.
        let (mut running, mut pending_ids, mut failed) = (0u32, Vec::new(), 0u32);
        for (id, pod) in &snap.pods {
            if pod.state.is_terminal() {
                if matches!(pod.state, PodState::Failed { .. }) {
                    failed += 1;
                    if self.failed_seen.insert(*id) {
                        self.failures.push_back(now);
                        metrics::counter!("kshuffle_scheduler_executor_failures_total")
                            .increment(1);
                    }
                }
                if s.delete_on_termination && !pod.deleting && !self.deleted.contains_key(id) {
                    self.deleted.insert(*id, (now, false));
                    plan.delete.push(*id);
                }
                continue;
            }
            if pod.deleting || self.deleted.contains_key(id) {
                continue;
            }
            match pod.state {
                PodState::Running => running += 1,
                PodState::Pending | PodState::Unknown => pending_ids.push(*id),
                _ => {}
            }
        }
        self.failed_seen.retain(|id| snap.pods.contains_key(id));
        self.pending_since.retain(|id, _| pending_ids.contains(id));

        // Ours: pods stuck Pending past the creation timeout.
        let mut still_pending = Vec::new();
        for id in pending_ids {
            let since = *self.pending_since.entry(id).or_insert(now);
            if now.saturating_duration_since(since) > s.creation_timeout {
                self.deleted.insert(id, (now, false));
                plan.delete.push(id);
                self.failure(now);
            } else {
                still_pending.push(id);
            }
        }

        let mut not_running = still_pending.len() + self.outstanding();
        let count = running as usize + not_running;
        let target = self.target as usize;
        if count > target {
            let excess = count - target;
            let old = |t: &Instant| now.saturating_duration_since(*t) > s.idle_timeout;
            let new_del: Vec<ExecutorId> = self
                .newly_created
                .iter()
                .filter(|(_, t)| old(t))
                .map(|(id, _)| *id)
                .take(excess)
                .collect();
            let pend_del: Vec<ExecutorId> = still_pending
                .iter()
                .filter(|id| self.pending_since.get(id).is_some_and(old))
                .copied()
                .take(excess - new_del.len())
                .collect();
            for id in &new_del {
                self.newly_created.remove(id);
            }
            for id in &pend_del {
                self.deleted.insert(*id, (now, true));
            }
            not_running -= new_del.len() + pend_del.len();
            plan.delete_pending.extend(new_del);
            plan.delete_pending.extend(pend_del);
        }

        if let Some(window) = s.failures_window {
            while self
                .failures
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > window)
            {
                self.failures.pop_front();
            }
        }
        if self.failures.len() > s.max_failures as usize && !self.stopped {
            self.stopped = true;
            tracing::error!(
                max = s.max_failures,
                "max number of executor failures reached; no more executor pods will be created"
            );
        }

        let count = running as usize + not_running;
        if !self.stopped && self.outstanding() == 0 && count < target {
            let slots = (s.max_pending as usize).saturating_sub(not_running);
            let n = (target - count).min(s.batch_size as usize).min(slots);
            for _ in 0..n {
                let id = ExecutorId(self.next_id);
                self.next_id += 1;
                self.newly_created.insert(id, now);
                plan.create.push(id);
            }
        }
        self.counts = Counts {
            target: self.target,
            running,
            pending: u32::try_from(not_running + plan.create.len()).unwrap_or(u32::MAX),
            failed,
            recent_failures: u32::try_from(self.failures.len()).unwrap_or(u32::MAX),
            stopped: self.stopped,
        };
        plan
    }

    /// Records how a create ended.
    pub fn created(&mut self, id: ExecutorId, outcome: Created, now: Instant) {
        match outcome {
            Created::Yes => {}
            Created::Refused => {
                self.newly_created.remove(&id);
                self.failure(now);
            }
            Created::Unknown => {
                if let Some(t) = self.newly_created.remove(&id) {
                    self.uncertain.insert(id, t);
                }
            }
        }
    }

    /// Forgets a planned create that was never sent.
    pub fn not_sent(&mut self, id: ExecutorId) {
        self.newly_created.remove(&id);
    }

    /// Records a lookup of a create of unknown outcome: `Some(true)` the pod exists,
    /// `Some(false)` it does not, `None` we still do not know.
    pub fn verified(&mut self, id: ExecutorId, exists: Option<bool>) {
        match exists {
            Some(true) => {
                if let Some(t) = self.uncertain.remove(&id) {
                    self.newly_created.insert(id, t);
                }
            }
            Some(false) => {
                self.uncertain.remove(&id);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests;
