//! Tables pinned to Spark's behaviour (`ExecutorAllocationManagerSuite`,
//! `ExecutorMonitorSuite` describe the same rules). Times are seconds on the injected clock.

use super::*;
use crate::config::Config;

fn conf(extra: &[&str]) -> DynamicAllocation {
    let mut args = vec![
        "spark.dynamicAllocation.enabled=true",
        "spark.shuffle.service.enabled=true",
    ];
    args.extend_from_slice(extra);
    Config::from_args(args).unwrap().dynamic_allocation
}

fn s(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

const E: fn(u64) -> ExecutorId = ExecutorId;
const STAGE: StageId = StageId(0);

/// Runs `schedule` at each time and returns the targets.
fn targets(p: &mut Policy, times: &[f64]) -> Vec<u32> {
    times.iter().map(|t| p.schedule(s(*t)).target).collect()
}

#[test]
fn exponential_ramp_up_capped_by_max() {
    let mut p = Policy::new(conf(&["spark.dynamicAllocation.maxExecutors=10"]));
    p.stage_submitted(s(0.0), STAGE, 100, None);
    // Backlog timer fires at 1s; then every sustained timeout (1s) adds 1, 2, 4, ... until
    // the cap; reaching the cap resets the step.
    assert_eq!(
        targets(&mut p, &[0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0]),
        [0, 0, 1, 1, 3, 7, 10, 10]
    );
}

#[test]
fn ramp_up_is_capped_by_what_the_tasks_need() {
    let cases: &[(&[&str], u32, &[u32])] = &[
        // 5 tasks, 1 per executor: 1, 3, then 5 (not 7).
        (&[], 5, &[1, 3, 5, 5]),
        // executorAllocationRatio 0.5 halves what is needed: ceil(5 * 0.5) = 3.
        (
            &["spark.dynamicAllocation.executorAllocationRatio=0.5"],
            5,
            &[1, 3, 3, 3],
        ),
        // 2 tasks per executor: ceil(9 / 2) = 5.
        (&["spark.executor.cores=2"], 9, &[1, 3, 5, 5]),
        // min 4: the target never goes below it, and ramping starts above it.
        (
            &["spark.dynamicAllocation.minExecutors=4"],
            100,
            &[5, 7, 11, 19],
        ),
    ];
    for (extra, tasks, want) in cases {
        let mut p = Policy::new(conf(extra));
        p.stage_submitted(s(0.0), STAGE, *tasks, None);
        assert_eq!(targets(&mut p, &[1.0, 2.0, 3.0, 4.0]), *want, "{extra:?}");
    }
}

#[test]
fn sustained_backlog_timeout_spaces_later_rounds() {
    let mut p = Policy::new(conf(&[
        "spark.dynamicAllocation.schedulerBacklogTimeout=2s",
        "spark.dynamicAllocation.sustainedSchedulerBacklogTimeout=5s",
    ]));
    p.stage_submitted(s(0.0), STAGE, 100, None);
    assert_eq!(
        targets(&mut p, &[1.9, 2.0, 6.9, 7.0, 11.9, 12.0]),
        [0, 1, 1, 3, 3, 7]
    );
}

#[test]
fn ramp_starts_from_the_executors_already_there() {
    let mut p = Policy::new(conf(&[]));
    for i in 1..=5 {
        p.executor_added(s(0.0), E(i));
    }
    p.stage_submitted(s(0.0), STAGE, 100, None);
    // max(target, executors) + 1 = 6; the round added 6, not the step of 1, so the step
    // stays 1 (doUpdateRequest doubles only when delta == numExecutorsToAdd).
    assert_eq!(targets(&mut p, &[1.0, 2.0, 3.0]), [6, 7, 9]);
}

#[test]
fn an_emptied_queue_resets_the_step_and_the_timer() {
    let mut p = Policy::new(conf(&[]));
    p.stage_submitted(s(0.0), STAGE, 100, None);
    assert_eq!(targets(&mut p, &[1.0, 2.0, 3.0]), [1, 3, 7]);
    p.stage_completed(STAGE);
    // Nothing needed: the target drops at once (to min = 0).
    assert_eq!(targets(&mut p, &[3.1, 10.0]), [0, 0]);
    p.stage_submitted(s(10.0), StageId(1), 100, None);
    assert_eq!(targets(&mut p, &[10.5, 11.0, 12.0]), [0, 1, 3]);
}

#[test]
fn target_falls_to_what_running_and_pending_tasks_need_but_not_below_min() {
    let mut p = Policy::new(conf(&["spark.dynamicAllocation.minExecutors=3"]));
    p.stage_submitted(s(0.0), STAGE, 20, None);
    assert_eq!(targets(&mut p, &[1.0, 2.0, 3.0, 4.0]), [4, 6, 10, 18]);
    for i in 1..=20 {
        p.executor_added(s(4.0), E(i));
        p.task_started(s(4.0), STAGE, E(i));
    }
    for i in 1..=19 {
        p.task_ended(s(5.0), STAGE, E(i), TaskEnd::Success);
    }
    // 1 running task needs 1 executor; min is 3.
    assert_eq!(targets(&mut p, &[5.0]), [3]);
}

#[test]
fn a_failed_task_re_arms_the_backlog_timer() {
    let mut p = Policy::new(conf(&[]));
    p.stage_submitted(s(0.0), STAGE, 1, None);
    p.executor_added(s(0.0), E(1));
    // Started before the backlog timer fired: the queue is empty, the timer cleared.
    p.task_started(s(0.5), STAGE, E(1));
    assert_eq!(targets(&mut p, &[0.5, 3.0]), [0, 0]);
    p.task_ended(s(5.0), STAGE, E(1), TaskEnd::Failed);
    // The task is pending again; the timer fires one backlog timeout later.
    assert_eq!(p.max_needed(), 1);
    assert_eq!(p.schedule(s(5.9)).target, 0);
    assert_eq!(
        p.schedule(s(6.0)),
        Decision {
            target: 1,
            target_changed: true,
            remove: vec![]
        }
    );
}

#[test]
fn initial_target_holds_until_a_stage_or_an_idle_timeout() {
    let mut p = Policy::new(conf(&["spark.dynamicAllocation.initialExecutors=3"]));
    assert_eq!(targets(&mut p, &[0.0, 30.0]), [3, 3]);
    p.executor_added(s(0.0), E(1));
    // At 60s the executor times out: initializing ends, the target drops, and it goes.
    let d = p.schedule(s(60.0));
    assert_eq!(
        d,
        Decision {
            target: 0,
            target_changed: true,
            remove: vec![E(1)]
        }
    );
}

#[test]
fn idle_executors_go_but_never_below_min() {
    let mut p = Policy::new(conf(&["spark.dynamicAllocation.minExecutors=2"]));
    for i in 1..=5 {
        p.executor_added(s(0.0), E(i));
    }
    assert!(p.schedule(s(59.9)).remove.is_empty());
    assert_eq!(p.schedule(s(60.0)).remove, [E(1), E(2), E(3)]);
    // The survivors are timed out too, but removing them would go below min.
    assert!(p.schedule(s(61.0)).remove.is_empty());
    for i in 1..=3 {
        p.executor_removed(E(i));
    }
    assert!(p.schedule(s(120.0)).remove.is_empty());
    assert_eq!(p.executor_count(), 2);
}

#[test]
fn idle_executors_are_kept_while_the_target_wants_them() {
    let mut p = Policy::new(conf(&["spark.dynamicAllocation.initialExecutors=4"]));
    for i in 1..=4 {
        p.executor_added(s(0.0), E(i));
    }
    p.stage_submitted(s(0.0), STAGE, 4, None);
    p.task_started(s(0.0), STAGE, E(1));
    p.task_started(s(0.0), STAGE, E(2));
    // 2 running + 2 pending need 4: the idle E3 and E4 stay.
    let d = p.schedule(s(60.0));
    assert_eq!((d.target, d.remove.len()), (4, 0));
}

#[test]
fn executors_running_tasks_never_time_out() {
    let mut p = Policy::new(conf(&[]));
    p.executor_added(s(0.0), E(1));
    p.stage_submitted(s(0.0), STAGE, 1, None);
    p.task_started(s(1.0), STAGE, E(1));
    assert!(p.schedule(s(1000.0)).remove.is_empty());
    p.task_ended(s(1000.0), STAGE, E(1), TaskEnd::Success);
    p.stage_completed(STAGE);
    assert!(p.schedule(s(1059.0)).remove.is_empty());
    assert_eq!(p.schedule(s(1060.0)).remove, [E(1)]);
}

#[test]
fn cached_blocks_keep_an_executor_for_the_cached_idle_timeout() {
    // (extra conf, block on disk, when it goes: None = never within 10^6 s)
    let cases: &[(&[&str], bool, Option<f64>)] = &[
        (&[], false, None),
        (
            &["spark.dynamicAllocation.cachedExecutorIdleTimeout=120s"],
            false,
            Some(120.0),
        ),
        // Served by the shuffle service: disk blocks do not count.
        (
            &["spark.shuffle.service.fetch.rdd.enabled=true"],
            true,
            Some(60.0),
        ),
        (
            &["spark.shuffle.service.fetch.rdd.enabled=true"],
            false,
            None,
        ),
    ];
    for (extra, on_disk, goes_at) in cases {
        let mut p = Policy::new(conf(extra));
        p.executor_added(s(0.0), E(1));
        p.rdd_block(E(1), RddId(1), 0, true, *on_disk);
        let at = p.timed_out(s(1e6)).is_empty().then_some(()).map_or_else(
            || {
                (0..=1_000_000)
                    .map(f64::from)
                    .find(|t| !p.timed_out(s(*t)).is_empty())
            },
            |()| None,
        );
        assert_eq!(at, *goes_at, "{extra:?} on_disk={on_disk}");
    }
    // Unpersisting gives the executor back its plain idle timeout.
    let mut p = Policy::new(conf(&[]));
    p.executor_added(s(0.0), E(1));
    p.rdd_block(E(1), RddId(1), 0, true, false);
    p.rdd_unpersisted(RddId(1));
    assert_eq!(p.timed_out(s(60.0)), [E(1)]);
}

/// An executor that wrote output of shuffle 7 for job 1, idle from t=10.
fn with_shuffle_output(extra: &[&str]) -> Policy {
    let mut p = Policy::new(conf(extra));
    p.executor_added(s(0.0), E(1));
    p.job_started(JobId(1), &[ShuffleId(7)]);
    p.stage_submitted(s(0.0), STAGE, 1, Some(ShuffleId(7)));
    p.task_started(s(0.0), STAGE, E(1));
    p.task_ended(s(10.0), STAGE, E(1), TaskEnd::Success);
    p.stage_completed(STAGE);
    p
}

#[test]
fn with_the_shuffle_service_idle_executors_go_whatever_shuffle_output_they_wrote() {
    let mut p = with_shuffle_output(&[]);
    assert_eq!(p.timed_out(s(70.0)), [E(1)]);
    assert_eq!(p.schedule(s(70.0)).remove, [E(1)]);
}

#[test]
fn without_the_service_shuffle_tracking_keeps_executors_holding_output() {
    let no_service = |extra: &[&str]| {
        let mut args = vec!["spark.shuffle.service.enabled=false"];
        args.extend_from_slice(extra);
        with_shuffle_output(&args)
    };
    // Output of an active job: never removed.
    let mut p = no_service(&[]);
    assert!(p.timed_out(s(1e6)).is_empty());
    // Job over, default shuffleTracking.timeout (infinite): still kept.
    p.job_ended(JobId(1));
    assert!(p.timed_out(s(1e6)).is_empty());
    // Shuffle cleaned by the driver: the plain idle timeout applies from when it went idle.
    p.shuffle_cleaned(ShuffleId(7));
    assert_eq!(p.timed_out(s(70.0)), [E(1)]);

    // With shuffleTracking.timeout, an inactive shuffle keeps it that long (not the idle timeout).
    let mut p = no_service(&["spark.dynamicAllocation.shuffleTracking.timeout=30s"]);
    assert!(p.timed_out(s(40.0)).is_empty(), "active job");
    p.job_ended(JobId(1));
    assert!(p.timed_out(s(39.9)).is_empty());
    assert_eq!(p.timed_out(s(40.0)), [E(1)]);

    // A new job that reuses the shuffle makes it active again.
    p.job_started(JobId(2), &[ShuffleId(7)]);
    assert!(p.timed_out(s(1e6)).is_empty());
}

/// Random event sequences (a fixed-seed xorshift, so failures reproduce): the target stays in
/// [min, max] and idle removal never takes the executors left below max(min, target).
#[test]
fn invariants_hold_over_random_event_sequences() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    let (mut removals, mut raised) = (0, 0);
    for case in 0..200 {
        let (min, max) = (rnd(4) as u32, 4 + rnd(30) as u32);
        let min_s = format!("spark.dynamicAllocation.minExecutors={min}");
        let max_s = format!("spark.dynamicAllocation.maxExecutors={max}");
        let mut p = Policy::new(conf(&[
            &min_s,
            &max_s,
            "spark.dynamicAllocation.executorIdleTimeout=5s",
        ]));
        let mut now = 0.0;
        let mut alive: Vec<u64> = Vec::new();
        let mut next_exec = 1;
        let mut stages: Vec<u32> = Vec::new();
        let mut running: Vec<(u32, u64)> = Vec::new();
        for _ in 0..300 {
            now += rnd(3000) as f64 / 1000.0;
            match rnd(8) {
                0 => {
                    p.executor_added(s(now), E(next_exec));
                    alive.push(next_exec);
                    next_exec += 1;
                }
                1 => {
                    let st = rnd(1000) as u32;
                    p.stage_submitted(s(now), StageId(st), rnd(60) as u32, None);
                    stages.push(st);
                }
                2 | 3 if !stages.is_empty() && !alive.is_empty() => {
                    let st = stages[rnd(stages.len() as u64) as usize];
                    let ex = alive[rnd(alive.len() as u64) as usize];
                    p.task_started(s(now), StageId(st), E(ex));
                    running.push((st, ex));
                }
                4 if !running.is_empty() => {
                    let (st, ex) = running.swap_remove(rnd(running.len() as u64) as usize);
                    let end = [TaskEnd::Success, TaskEnd::Failed, TaskEnd::Killed][rnd(3) as usize];
                    p.task_ended(s(now), StageId(st), E(ex), end);
                }
                5 if !stages.is_empty() => {
                    let st = stages.swap_remove(rnd(stages.len() as u64) as usize);
                    p.stage_completed(StageId(st));
                }
                _ => {
                    let before = alive.len();
                    let d = p.schedule(s(now));
                    assert!(d.target >= min && d.target <= max, "case {case}: {d:?}");
                    for id in &d.remove {
                        assert!(
                            alive.contains(&id.0),
                            "case {case}: removes an unknown executor"
                        );
                        assert!(
                            !running.iter().any(|(_, e)| *e == id.0),
                            "case {case}: removes a busy executor"
                        );
                    }
                    removals += d.remove.len();
                    raised += usize::from(d.target_changed && d.target > min);
                    alive.retain(|e| !d.remove.contains(&E(*e)));
                    for id in &d.remove {
                        p.executor_removed(*id);
                    }
                    let floor = (min.max(d.target) as usize).min(before);
                    assert!(
                        alive.len() >= floor,
                        "case {case}: {} left, floor {floor}",
                        alive.len()
                    );
                }
            }
        }
    }
    // The sequences do exercise both directions.
    assert!(
        removals > 100 && raised > 100,
        "removals {removals}, raises {raised}"
    );
}
