//! The allocator's rules as tables over snapshots (no API, time passed in).

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::snapshots::{ExecutorPod, PodState, Snapshot};

fn settings() -> Settings {
    Settings {
        batch_size: 5,
        max_pending: 8,
        creation_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        delete_on_termination: true,
        max_failures: 3,
        failures_window: None,
        delete_retry: Duration::from_secs(5),
        first_executor_id: 1,
    }
}

fn snap(pods: &[(u64, PodState)]) -> Snapshot {
    let mut s = Snapshot {
        synced: true,
        ..Snapshot::default()
    };
    for (id, state) in pods {
        s.pods.insert(
            ExecutorId(*id),
            ExecutorPod::for_test(ExecutorId(*id), state.clone()),
        );
    }
    s
}

fn ids(v: &[u64]) -> Vec<ExecutorId> {
    v.iter().copied().map(ExecutorId).collect()
}

#[test]
fn nothing_happens_before_the_first_complete_list() {
    let mut a = Allocator::new(settings());
    a.set_target(3);
    let s = Snapshot::default();
    assert!(a.round(Instant::now(), &s).is_empty());
}

#[test]
fn batches_wait_for_earlier_requests_and_respect_the_pending_cap() {
    let t0 = Instant::now();
    let mut a = Allocator::new(settings());
    a.set_target(20);
    // First batch: batch.size = 5.
    assert_eq!(a.round(t0, &snap(&[])).create, ids(&[1, 2, 3, 4, 5]));
    // Not all seen yet: no new batch.
    assert!(
        a.round(t0, &snap(&[(1, PodState::Pending)]))
            .create
            .is_empty()
    );
    // All seen and Pending: 5 pending of a cap of 8 leaves 3 slots.
    let pending: Vec<_> = (1..=5).map(|i| (i, PodState::Pending)).collect();
    assert_eq!(a.round(t0, &snap(&pending)).create, ids(&[6, 7, 8]));
    // Five run, three pending: 5 slots, a full batch.
    let mut pods: Vec<_> = (1..=5).map(|i| (i, PodState::Running)).collect();
    pods.extend((6..=8).map(|i| (i, PodState::Pending)));
    assert_eq!(a.round(t0, &snap(&pods)).create, ids(&[9, 10, 11, 12, 13]));
}

#[test]
fn ids_continue_after_the_pods_already_there() {
    let mut a = Allocator::new(settings());
    a.set_target(3);
    let plan = a.round(Instant::now(), &snap(&[(41, PodState::Running)]));
    assert_eq!(plan.create, ids(&[42, 43]));
}

#[test]
fn requests_never_seen_are_deleted_after_the_creation_timeout() {
    let t0 = Instant::now();
    let mut a = Allocator::new(settings());
    a.set_target(1);
    assert_eq!(a.round(t0, &snap(&[])).create, ids(&[1]));
    assert!(a.round(t0 + Duration::from_secs(10), &snap(&[])).is_empty());
    let plan = a.round(t0 + Duration::from_secs(11), &snap(&[]));
    assert_eq!(plan.delete, ids(&[1]));
    // ... and replaced in the same round under a new id.
    assert_eq!(plan.create, ids(&[2]));
}

#[test]
fn stuck_pending_pods_are_timed_out_counted_and_not_retried_in_a_loop() {
    let t0 = Instant::now();
    let mut s = settings();
    s.max_pending = 2;
    s.max_failures = 3;
    let mut a = Allocator::new(s);
    a.set_target(2);
    let mut next = a.round(t0, &snap(&[])).create;
    let mut now = t0;
    let mut creates = next.len();
    let mut rounds_with_creates = 0;
    // Every pod stays Pending forever; run 100 rounds a second apart.
    let mut live: Vec<u64> = next.iter().map(|i| i.0).collect();
    for _ in 0..100 {
        now += Duration::from_secs(1);
        let pods: Vec<_> = live.iter().map(|i| (*i, PodState::Pending)).collect();
        let plan = a.round(now, &snap(&pods));
        live.retain(|i| !plan.delete.contains(&ExecutorId(*i)));
        next = plan.create;
        if !next.is_empty() {
            rounds_with_creates += 1;
        }
        creates += next.len();
        live.extend(next.iter().map(|i| i.0));
        assert!(live.len() <= 2, "pending cap");
    }
    // The first two time out (2 failures) and are replaced once; the replacements time out
    // too (4 failures > maxNumFailures 3): allocation stops. 4 creates in 100 rounds.
    assert!(a.counts().stopped);
    assert_eq!(creates, 4);
    assert_eq!(rounds_with_creates, 1);
}

#[test]
fn ids_start_at_the_first_executor_id_and_above_every_pod_seen() {
    let t0 = Instant::now();
    let mut a = Allocator::new(Settings {
        first_executor_id: 40,
        ..settings()
    });
    a.set_target(2);
    let ids = |p: Plan| p.create.iter().map(|id| id.0).collect::<Vec<_>>();
    // A pod of id 7 is still there: the first id wins as it is higher.
    assert_eq!(ids(a.round(t0, &snap(&[(7, PodState::Running)]))), [40]);
    let mut b = Allocator::new(settings());
    b.set_target(2);
    assert_eq!(ids(b.round(t0, &snap(&[(7, PodState::Running)]))), [8]);
}

#[test]
fn excess_requests_and_pending_pods_go_once_older_than_the_idle_timeout() {
    let t0 = Instant::now();
    let mut a = Allocator::new(Settings {
        creation_timeout: Duration::from_secs(600),
        ..settings()
    });
    a.set_target(3);
    assert_eq!(a.round(t0, &snap(&[])).create.len(), 3);
    let pods = [
        (1, PodState::Running),
        (2, PodState::Pending),
        (3, PodState::Pending),
    ];
    a.round(t0, &snap(&pods));
    a.set_target(1);
    // Young: protected.
    assert!(
        a.round(t0 + Duration::from_secs(30), &snap(&pods))
            .is_empty()
    );
    let plan = a.round(t0 + Duration::from_secs(61), &snap(&pods));
    assert_eq!(plan.delete_pending, ids(&[2, 3]));
    assert!(
        plan.delete.is_empty(),
        "running executors are the driver's to kill"
    );
}

#[test]
fn failed_pods_are_deleted_counted_once_and_replaced() {
    let t0 = Instant::now();
    let mut a = Allocator::new(settings());
    a.set_target(2);
    a.round(t0, &snap(&[]));
    let failed = PodState::Failed {
        reason: Some("Evicted".into()),
    };
    let pods = [(1, PodState::Running), (2, failed.clone())];
    let plan = a.round(t0, &snap(&pods));
    assert_eq!(plan.delete, ids(&[2]));
    assert_eq!(plan.create, ids(&[3]));
    // Same snapshot again (deletion not seen yet): no second delete or failure.
    let plan = a.round(t0 + Duration::from_secs(1), &snap(&pods));
    assert!(plan.delete.is_empty());
    assert_eq!(a.counts().recent_failures, 1);
    // Still there after the retry delay: asked again.
    let plan = a.round(t0 + Duration::from_secs(7), &snap(&pods));
    assert_eq!(plan.delete, ids(&[2]));
}

#[test]
fn unknown_create_outcomes_are_looked_up_not_duplicated() {
    let t0 = Instant::now();
    let mut a = Allocator::new(settings());
    a.set_target(2);
    let plan = a.round(t0, &snap(&[]));
    a.created(plan.create[0], Created::Yes, t0);
    a.created(plan.create[1], Created::Unknown, t0);
    let pods = [(1, PodState::Pending)];
    let plan = a.round(t0, &snap(&pods));
    assert_eq!(plan.verify, ids(&[2]));
    assert!(
        plan.create.is_empty(),
        "no new id while the outcome is unknown"
    );
    // Still unknown (outage): asked again next round, still no new pod.
    a.verified(ExecutorId(2), None);
    assert!(a.round(t0, &snap(&pods)).create.is_empty());
    // It does not exist: now a new id.
    a.verified(ExecutorId(2), Some(false));
    assert_eq!(a.round(t0, &snap(&pods)).create, ids(&[3]));
}

#[test]
fn killed_executors_are_deleted_and_not_counted() {
    let t0 = Instant::now();
    let mut a = Allocator::new(settings());
    a.set_target(2);
    a.round(t0, &snap(&[]));
    let pods = snap(&[(1, PodState::Running), (2, PodState::Running)]);
    assert_eq!(a.kill(t0, &pods, &ids(&[2, 9])), ids(&[2]));
    assert!(a.is_deleted(ExecutorId(2)));
    a.set_target(1);
    let plan = a.round(t0, &pods);
    assert!(plan.create.is_empty() && plan.delete.is_empty());
}

#[test]
fn terminated_pods_stay_when_delete_on_termination_is_off_but_are_replaced() {
    let t0 = Instant::now();
    let mut a = Allocator::new(Settings {
        delete_on_termination: false,
        ..settings()
    });
    a.set_target(2);
    a.round(t0, &snap(&[]));
    let pods = [(1, PodState::Running), (2, PodState::Succeeded)];
    let plan = a.round(t0, &snap(&pods));
    assert!(plan.delete.is_empty(), "kept for inspection");
    assert_eq!(plan.create, ids(&[3]));
    // A success is not a failure.
    assert_eq!(a.counts().recent_failures, 0);
}

#[test]
fn failures_expire_after_the_validity_interval() {
    let t0 = Instant::now();
    let mut a = Allocator::new(Settings {
        max_failures: 1,
        failures_window: Some(Duration::from_secs(30)),
        ..settings()
    });
    a.set_target(1);
    a.round(t0, &snap(&[]));
    let failed = PodState::Failed { reason: None };
    a.round(t0, &snap(&[(1, failed.clone())]));
    assert_eq!(a.counts().recent_failures, 1);
    // A second failure 40 s later: the first has expired, so 1 is not more than 1.
    let plan = a.round(t0 + Duration::from_secs(40), &snap(&[(2, failed)]));
    assert!(!a.counts().stopped);
    assert_eq!(plan.create.len(), 1);
}
