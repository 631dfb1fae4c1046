//! Tables of watch events in, decisions out.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn pod(name: &str, app: Option<&str>, phase: &str) -> DriverPod {
    DriverPod {
        key: format!("uid-{name}"),
        name: PodName {
            namespace: "spark".into(),
            name: name.into(),
        },
        app: app.map(|a| AppId(a.into())),
        is_driver: true,
        terminal: match phase {
            "Succeeded" => Some(EndReason::Succeeded),
            "Failed" => Some(EndReason::Failed),
            _ => None,
        },
    }
}

fn driver(name: &str, app: &str, phase: &str) -> DriverPod {
    pod(name, Some(app), phase)
}

fn ended(app: &str, reason: EndReason, pod: &str) -> AppEnded {
    AppEnded {
        app: AppId(app.into()),
        reason,
        pod: PodName {
            namespace: "spark".into(),
            name: pod.into(),
        },
    }
}

/// Runs inputs, returning every decision.
fn run(tracker: &mut Tracker, inputs: Vec<Input>) -> Vec<AppEnded> {
    inputs.into_iter().flat_map(|i| tracker.step(i)).collect()
}

fn listed(tracker: &mut Tracker, pods: Vec<DriverPod>) -> Vec<AppEnded> {
    let mut inputs = vec![Input::RelistStarted];
    inputs.extend(pods.into_iter().map(Input::Listed));
    inputs.push(Input::RelistDone);
    run(tracker, inputs)
}

#[test]
fn terminal_phases_end_the_app_once() {
    for (phase, reason) in [
        ("Succeeded", EndReason::Succeeded),
        ("Failed", EndReason::Failed),
    ] {
        let mut t = Tracker::new();
        assert!(listed(&mut t, vec![driver("d1", "app-1", "Running")]).is_empty());
        assert_eq!(t.live_drivers(), 1);
        let out = run(
            &mut t,
            vec![
                Input::Applied(driver("d1", "app-1", "Running")),
                Input::Applied(driver("d1", "app-1", phase)),
                // Later updates of the terminal pod and its deletion decide nothing more.
                Input::Applied(driver("d1", "app-1", phase)),
                Input::Deleted(driver("d1", "app-1", phase)),
            ],
        );
        assert_eq!(out, vec![ended("app-1", reason, "d1")], "{phase}");
        assert_eq!(t.live_drivers(), 0);
    }
}

#[test]
fn live_phases_never_end_the_app() {
    let mut t = Tracker::new();
    let mut inputs = vec![Input::RelistStarted];
    for (i, phase) in ["Pending", "Running", "Unknown", ""].iter().enumerate() {
        inputs.push(Input::Listed(driver(&format!("d{i}"), "app-1", phase)));
    }
    inputs.push(Input::RelistDone);
    for phase in ["Pending", "Running", "Unknown", ""] {
        inputs.push(Input::Applied(driver("d0", "app-1", phase)));
    }
    assert!(run(&mut t, inputs).is_empty());
    assert_eq!(t.live_drivers(), 4);
}

#[test]
fn deletion_ends_the_app() {
    let mut t = Tracker::new();
    listed(&mut t, vec![driver("d1", "app-1", "Running")]);
    let out = t.step(Input::Deleted(driver("d1", "app-1", "Running")));
    assert_eq!(out, vec![ended("app-1", EndReason::Deleted, "d1")]);
    // A deletion of a pod never seen is just as certain.
    let out = t.step(Input::Deleted(driver("d2", "app-2", "Running")));
    assert_eq!(out, vec![ended("app-2", EndReason::Deleted, "d2")]);
}

#[test]
fn a_terminal_pod_seen_first_in_a_list_ends_its_app() {
    // A daemon restarted after the driver finished still cleans the app up.
    let mut t = Tracker::new();
    let out = listed(
        &mut t,
        vec![
            driver("d1", "app-1", "Succeeded"),
            driver("d2", "app-2", "Running"),
        ],
    );
    assert_eq!(out, vec![ended("app-1", EndReason::Succeeded, "d1")]);
}

#[test]
fn a_pod_gone_from_a_complete_relist_was_deleted() {
    let mut t = Tracker::new();
    listed(
        &mut t,
        vec![
            driver("d1", "app-1", "Running"),
            driver("d2", "app-2", "Running"),
            driver("d3", "app-3", "Succeeded"),
        ],
    );
    // The watch expired; meanwhile d1 was deleted, d3 (already ended) too.
    let out = listed(&mut t, vec![driver("d2", "app-2", "Running")]);
    assert_eq!(out, vec![ended("app-1", EndReason::GoneFromRelist, "d1")]);
    assert_eq!(t.live_drivers(), 1);
}

#[test]
fn a_relist_cut_short_decides_nothing() {
    let mut t = Tracker::new();
    listed(
        &mut t,
        vec![
            driver("d1", "app-1", "Running"),
            driver("d2", "app-2", "Running"),
        ],
    );
    // A relist that lists d2, then fails and starts over: the partial view is discarded.
    let out = run(
        &mut t,
        vec![
            Input::RelistStarted,
            Input::Listed(driver("d2", "app-2", "Running")),
            Input::RelistStarted,
            Input::Listed(driver("d1", "app-1", "Running")),
            Input::Listed(driver("d2", "app-2", "Running")),
            Input::RelistDone,
        ],
    );
    assert!(out.is_empty(), "{out:?}");
    // An InitDone without a relist in progress is no complete view either.
    assert!(t.step(Input::RelistDone).is_empty());
    assert_eq!(t.live_drivers(), 2);
}

#[test]
fn never_seen_is_not_gone() {
    // The first list of a restarted daemon: apps it holds whose drivers are not found (a
    // client-mode driver has no pod) are left alone.
    let mut t = Tracker::new();
    assert!(listed(&mut t, vec![]).is_empty());
    assert!(listed(&mut t, vec![driver("d1", "app-1", "Running")]).is_empty());
}

#[test]
fn another_live_driver_of_the_app_keeps_it() {
    let mut t = Tracker::new();
    listed(
        &mut t,
        vec![
            driver("d1", "app-1", "Running"),
            driver("d2", "app-1", "Running"),
        ],
    );
    assert!(
        t.step(Input::Applied(driver("d1", "app-1", "Failed")))
            .is_empty()
    );
    let out = t.step(Input::Deleted(driver("d2", "app-1", "Running")));
    assert_eq!(out, vec![ended("app-1", EndReason::Deleted, "d2")]);
}

#[test]
fn leaving_the_selection_is_not_a_deletion() {
    let mut t = Tracker::new();
    listed(&mut t, vec![driver("d1", "app-1", "Running")]);
    let mut relabelled = driver("d1", "app-1", "Running");
    relabelled.is_driver = false;
    assert!(t.step(Input::Deleted(relabelled)).is_empty());
    assert_eq!(t.live_drivers(), 0);
    // Nor is its absence from the next relist.
    assert!(listed(&mut t, vec![]).is_empty());
}

#[test]
fn pods_without_an_app_label_are_ignored() {
    let mut t = Tracker::new();
    let out = listed(&mut t, vec![pod("d1", None, "Succeeded")]);
    assert!(out.is_empty());
    assert!(
        t.step(Input::Deleted(pod("d1", None, "Running")))
            .is_empty()
    );
    assert_eq!(t.live_drivers(), 0);
}

#[test]
fn from_pod_reads_labels_uid_and_phase() {
    let labels: BTreeMap<String, String> = [
        ("spark-role", "driver"),
        ("spark-app-selector", "spark-0123"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut p = Pod {
        metadata: ObjectMeta {
            name: Some("pi-driver".into()),
            namespace: Some("jobs".into()),
            uid: Some("u-1".into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        status: Some(PodStatus {
            phase: Some("Failed".into()),
            ..PodStatus::default()
        }),
        ..Pod::default()
    };
    let d = DriverPod::from_pod(&p);
    assert_eq!(d.key, "u-1");
    assert_eq!(d.name.to_string(), "jobs/pi-driver");
    assert_eq!(d.app, Some(AppId("spark-0123".into())));
    assert!(d.is_driver);
    assert_eq!(d.terminal, Some(EndReason::Failed));

    // Nothing set: a pod that decides nothing, keyed by its name.
    p.metadata.uid = None;
    p.metadata.labels = None;
    p.status = None;
    let d = DriverPod::from_pod(&p);
    assert_eq!(d.key, "jobs/pi-driver");
    assert_eq!((d.app, d.is_driver, d.terminal), (None, false, None));
}

/// The live counts always match the tracked pods, over a long pseudo-random event sequence,
/// and an app is never decided ended while one of its drivers is live.
#[test]
fn live_counts_stay_consistent() {
    let mut t = Tracker::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let phases = ["Pending", "Running", "Succeeded", "Failed"];
    for _ in 0..5000 {
        let i = next(6);
        let app = format!("app-{}", i % 3);
        let name = format!("d{i}");
        let phase = phases[usize::try_from(next(4)).unwrap()];
        let input = match next(6) {
            0 => Input::RelistStarted,
            1 => Input::RelistDone,
            2 => Input::Listed(driver(&name, &app, phase)),
            3 => Input::Deleted(driver(&name, &app, phase)),
            _ => Input::Applied(driver(&name, &app, phase)),
        };
        for decision in t.step(input) {
            assert!(
                !t.pods.values().any(|p| p.app == decision.app && !p.ended),
                "{decision:?} decided while a driver of the app is live"
            );
        }
        let mut live: HashMap<AppId, usize> = HashMap::new();
        for p in t.pods.values().filter(|p| !p.ended) {
            *live.entry(p.app.clone()).or_default() += 1;
        }
        assert_eq!(t.live, live);
        assert_eq!(t.live_drivers(), live.values().sum::<usize>());
    }
}
