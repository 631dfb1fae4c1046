//! Spark's dynamic-allocation policy, pure: scheduler events and an injected clock in, a
//! target number of executors and executors to remove out. No I/O, no tokio, no kube.
//!
//! The rules, and where they live in Spark (4.x):
//! - Target from backlog, `ExecutorAllocationManager`:
//!   `updateAndSyncNumExecutorsTarget` (lower the target to `max(maxNeeded, min)` as soon as
//!   fewer are needed; raise it only when the backlog timer has fired), `addExecutors`
//!   (target = `min(max(target, current) + toAdd, maxNeeded)` clamped to `[min, max]`; no
//!   change resets `toAdd` to 1), `doUpdateRequest` (`toAdd` doubles when the whole round was
//!   granted, else 1; the next round fires after `sustainedSchedulerBacklogTimeout`),
//!   `maxNumExecutorsNeededPerResourceProfile` (`ceil((pending + running) * ratio /
//!   tasksPerExecutor)`), `onSchedulerBacklogged` / `onSchedulerQueueEmpty` (arm the timer at
//!   `now + schedulerBacklogTimeout` if unset; clear it and reset `toAdd`), and the
//!   `initializing` flag (the target stays at `initialExecutors` until a stage is submitted
//!   or an executor times out).
//! - Pending tasks, `ExecutorAllocationListener`: a stage's tasks minus those started; a
//!   failed task is pending again and re-arms the backlog timer if nothing else was pending
//!   (SPARK-8366); a stage's completion empties its backlog.
//! - Idle executors, `scheduler/dynalloc/ExecutorMonitor.Tracker.updateTimeout`: an executor
//!   with no running task times out `executorIdleTimeout` after it went idle; with cached
//!   blocks after `cachedExecutorIdleTimeout` (blocks on disk do not count when
//!   `spark.shuffle.service.fetch.rdd.enabled`), with shuffle output (tracked only when shuffle
//!   tracking is on and the shuffle service is off) after `shuffleTracking.timeout`, the
//!   smaller of the two when both; `timedOutExecutors` never returns executors pending
//!   removal or holding shuffle output of an active job (`hasActiveShuffle`, maintained by
//!   `onJobStart` / `onJobEnd` / `shuffleCleaned`).
//! - Removal, `ExecutorAllocationManager.removeExecutors`: an idle executor is removed only
//!   while the executors left (minus those pending removal) stay at or above both
//!   `minExecutors` and the current target.
//!
//! Simplifications: one resource profile; no speculation, locality hints, unschedulable task
//! sets or decommissioning.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::config::DynamicAllocation;
use crate::ids::{ExecutorId, JobId, RddId, ShuffleId, StageId};

/// How a task ended, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    /// It succeeded.
    Success,
    /// It was killed on purpose (e.g. the speculative copy won): not retried.
    Killed,
    /// It failed and will be retried.
    Failed,
}

/// What one run of [`Policy::schedule`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The target number of executors after this run.
    pub target: u32,
    /// Whether the target changed (Spark calls `requestTotalExecutors` only then).
    pub target_changed: bool,
    /// Idle executors to kill, without lowering the target.
    pub remove: Vec<ExecutorId>,
}

#[derive(Debug, Default)]
struct Stage {
    num_tasks: u32,
    started: u32,
    shuffle: Option<ShuffleId>,
}

#[derive(Debug, Default)]
struct Tracker {
    running: u32,
    /// When the executor last went idle; `None` while it runs tasks.
    idle_start: Option<Duration>,
    /// Cached RDD partitions that keep the executor (see the module docs).
    cached: BTreeMap<RddId, BTreeSet<u32>>,
    /// Shuffles it holds output of (only with shuffle tracking).
    shuffles: BTreeSet<ShuffleId>,
    has_active_shuffle: bool,
    pending_removal: bool,
}

/// The policy state of one application.
#[derive(Debug)]
pub struct Policy {
    conf: DynamicAllocation,
    shuffle_tracking: bool,
    target: u32,
    to_add: u32,
    add_time: Option<Duration>,
    initializing: bool,
    stages: BTreeMap<StageId, Stage>,
    running_per_stage: BTreeMap<StageId, u32>,
    executors: BTreeMap<ExecutorId, Tracker>,
    shuffle_jobs: BTreeMap<ShuffleId, BTreeSet<JobId>>,
    job_shuffles: BTreeMap<JobId, Vec<ShuffleId>>,
}

impl Policy {
    /// A policy at its initial target.
    pub fn new(conf: DynamicAllocation) -> Self {
        Self {
            // ExecutorMonitor.shuffleTrackingEnabled: only without the shuffle service.
            shuffle_tracking: conf.shuffle_tracking_enabled && !conf.shuffle_service_enabled,
            target: conf.initial_executors,
            to_add: 1,
            add_time: None,
            initializing: true,
            stages: BTreeMap::new(),
            running_per_stage: BTreeMap::new(),
            executors: BTreeMap::new(),
            shuffle_jobs: BTreeMap::new(),
            job_shuffles: BTreeMap::new(),
            conf,
        }
    }

    /// The current target.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// Executors the policy knows.
    pub fn executor_count(&self) -> usize {
        self.executors.len()
    }

    fn pending_tasks(&self) -> u64 {
        self.stages
            .values()
            .map(|s| u64::from(s.num_tasks.saturating_sub(s.started)))
            .sum()
    }

    fn running_tasks(&self) -> u64 {
        self.running_per_stage.values().map(|n| u64::from(*n)).sum()
    }

    /// `maxNumExecutorsNeededPerResourceProfile`.
    pub fn max_needed(&self) -> u32 {
        let tasks = (self.pending_tasks() + self.running_tasks()) as f64;
        let needed =
            (tasks * self.conf.allocation_ratio / f64::from(self.conf.tasks_per_executor)).ceil();
        if needed >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            needed as u32
        }
    }

    fn backlogged(&mut self, now: Duration) {
        if self.add_time.is_none() {
            self.add_time = Some(now.saturating_add(self.conf.scheduler_backlog_timeout));
        }
    }

    fn queue_empty(&mut self) {
        self.add_time = None;
        self.to_add = 1;
    }

    // === listener events ===

    /// A stage was submitted with `num_tasks` tasks; `shuffle` is the shuffle it writes.
    pub fn stage_submitted(
        &mut self,
        now: Duration,
        stage: StageId,
        num_tasks: u32,
        shuffle: Option<ShuffleId>,
    ) {
        self.initializing = false;
        self.stages.insert(
            stage,
            Stage {
                num_tasks,
                started: 0,
                shuffle,
            },
        );
        self.backlogged(now);
    }

    /// A stage completed (or was aborted): its backlog is gone.
    pub fn stage_completed(&mut self, stage: StageId) {
        self.stages.remove(&stage);
        if self.stages.is_empty() {
            self.queue_empty();
        }
    }

    /// A task of `stage` started on `executor`.
    pub fn task_started(&mut self, _now: Duration, stage: StageId, executor: ExecutorId) {
        *self.running_per_stage.entry(stage).or_default() += 1;
        if let Some(s) = self.stages.get_mut(&stage) {
            s.started = s.started.saturating_add(1).min(s.num_tasks);
        }
        if self.pending_tasks() == 0 {
            self.queue_empty();
        }
        let t = self.executors.entry(executor).or_default();
        t.running += 1;
        t.idle_start = None;
    }

    /// A task of `stage` ended on `executor`.
    pub fn task_ended(
        &mut self,
        now: Duration,
        stage: StageId,
        executor: ExecutorId,
        end: TaskEnd,
    ) {
        if let Some(n) = self.running_per_stage.get_mut(&stage) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running_per_stage.remove(&stage);
            }
        }
        if end == TaskEnd::Failed {
            // Checked before the task is pending again, as Spark does.
            if self.pending_tasks() == 0 {
                self.backlogged(now);
            }
            if let Some(s) = self.stages.get_mut(&stage) {
                s.started = s.started.saturating_sub(1);
            }
        }
        let shuffle = self.stages.get(&stage).and_then(|s| s.shuffle);
        let tracking = self.shuffle_tracking;
        if let Some(t) = self.executors.get_mut(&executor) {
            if tracking
                && end == TaskEnd::Success
                && let Some(sh) = shuffle
                && t.shuffles.insert(sh)
            {
                t.has_active_shuffle = true;
            }
            t.running = t.running.saturating_sub(1);
            if t.running == 0 {
                t.idle_start = Some(now);
            }
        }
    }

    /// An executor registered.
    pub fn executor_added(&mut self, now: Duration, executor: ExecutorId) {
        let t = self.executors.entry(executor).or_default();
        if t.running == 0 {
            t.idle_start = Some(now);
        }
    }

    /// An executor is gone.
    pub fn executor_removed(&mut self, executor: ExecutorId) {
        self.executors.remove(&executor);
    }

    /// A job started; `shuffles` are the shuffles its stages write or read.
    pub fn job_started(&mut self, job: JobId, shuffles: &[ShuffleId]) {
        if !self.shuffle_tracking {
            return;
        }
        for sh in shuffles {
            self.shuffle_jobs.entry(*sh).or_default().insert(job);
        }
        self.job_shuffles.insert(job, shuffles.to_vec());
        let active: BTreeSet<ShuffleId> = shuffles.iter().copied().collect();
        for t in self.executors.values_mut() {
            if !t.has_active_shuffle {
                t.has_active_shuffle = t.shuffles.iter().any(|s| active.contains(s));
            }
        }
    }

    /// A job ended: shuffles no other job uses stop keeping executors busy.
    pub fn job_ended(&mut self, job: JobId) {
        if !self.shuffle_tracking {
            return;
        }
        for sh in self.job_shuffles.remove(&job).unwrap_or_default() {
            if let Some(jobs) = self.shuffle_jobs.get_mut(&sh) {
                jobs.remove(&job);
            }
        }
        let active: BTreeSet<ShuffleId> = self
            .shuffle_jobs
            .iter()
            .filter(|(_, jobs)| !jobs.is_empty())
            .map(|(s, _)| *s)
            .collect();
        for t in self.executors.values_mut() {
            t.has_active_shuffle = t.shuffles.iter().any(|s| active.contains(s));
        }
    }

    /// The driver cleaned a shuffle up: nobody needs its output any more.
    pub fn shuffle_cleaned(&mut self, shuffle: ShuffleId) {
        self.shuffle_jobs.remove(&shuffle);
        for t in self.executors.values_mut() {
            if t.shuffles.remove(&shuffle) && t.shuffles.is_empty() {
                t.has_active_shuffle = false;
            }
        }
    }

    /// A cached RDD partition was stored on (`stored`) or dropped from an executor.
    pub fn rdd_block(
        &mut self,
        executor: ExecutorId,
        rdd: RddId,
        partition: u32,
        stored: bool,
        on_disk: bool,
    ) {
        let served_by_service = self.conf.shuffle_service_fetch_rdd_enabled && on_disk;
        let t = self.executors.entry(executor).or_default();
        if stored && !served_by_service {
            t.cached.entry(rdd).or_default().insert(partition);
        } else if let Some(parts) = t.cached.get_mut(&rdd) {
            parts.remove(&partition);
            if parts.is_empty() {
                t.cached.remove(&rdd);
            }
        }
    }

    /// An RDD was unpersisted everywhere.
    pub fn rdd_unpersisted(&mut self, rdd: RddId) {
        for t in self.executors.values_mut() {
            t.cached.remove(&rdd);
        }
    }

    // === the scheduling tick ===

    /// When an idle executor times out (`Tracker.updateTimeout`); `None` is never.
    fn deadline(&self, t: &Tracker) -> Option<Duration> {
        let idle_start = t.idle_start?;
        let timeout = if !t.cached.is_empty() || !t.shuffles.is_empty() {
            let cache = if t.cached.is_empty() {
                Duration::MAX
            } else {
                self.conf.cached_executor_idle_timeout
            };
            let shuffle = if t.shuffles.is_empty() {
                Duration::MAX
            } else {
                self.conf.shuffle_tracking_timeout
            };
            cache.min(shuffle)
        } else {
            self.conf.executor_idle_timeout
        };
        idle_start.checked_add(timeout)
    }

    /// Executors timed out at `now` (`ExecutorMonitor.timedOutExecutors`).
    pub fn timed_out(&self, now: Duration) -> Vec<ExecutorId> {
        self.executors
            .iter()
            .filter(|(_, t)| !t.pending_removal && !t.has_active_shuffle)
            .filter(|(_, t)| self.deadline(t).is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect()
    }

    /// One run of Spark's `schedule()`, at `now`.
    pub fn schedule(&mut self, now: Duration) -> Decision {
        let timed_out = self.timed_out(now);
        if !timed_out.is_empty() {
            self.initializing = false;
        }
        let before = self.target;
        self.update_target(now);
        let remove = self.remove(&timed_out);
        Decision {
            target: self.target,
            target_changed: self.target != before,
            remove,
        }
    }

    fn update_target(&mut self, now: Duration) {
        if self.initializing {
            return;
        }
        let max_needed = self.max_needed();
        if max_needed < self.target {
            self.target = max_needed.max(self.conf.min_executors);
            self.to_add = 1;
        } else if self.add_time.is_some_and(|t| now >= t) {
            self.add(now, max_needed);
        }
    }

    fn add(&mut self, now: Duration, max_needed: u32) {
        let (min, max) = (self.conf.min_executors, self.conf.max_executors);
        if self.target >= max {
            self.to_add = 1;
            return;
        }
        let old = self.target;
        let current = u32::try_from(self.executors.len()).unwrap_or(u32::MAX);
        let mut t = self.target.max(current).saturating_add(self.to_add);
        t = t.min(max_needed);
        t = t.min(max).max(min);
        self.target = t;
        let delta = t.saturating_sub(old);
        if delta == 0 {
            self.to_add = 1;
            return;
        }
        self.to_add = if delta == self.to_add {
            self.to_add.saturating_mul(2)
        } else {
            1
        };
        self.add_time = Some(now.saturating_add(self.conf.sustained_scheduler_backlog_timeout));
    }

    fn remove(&mut self, candidates: &[ExecutorId]) -> Vec<ExecutorId> {
        let pending = self
            .executors
            .values()
            .filter(|t| t.pending_removal)
            .count();
        let mut left = self.executors.len().saturating_sub(pending);
        let floor = usize::try_from(self.conf.min_executors.max(self.target)).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for id in candidates {
            if left == 0 || left - 1 < floor {
                continue;
            }
            if let Some(t) = self.executors.get_mut(id) {
                t.pending_removal = true;
                left -= 1;
                out.push(*id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
