//! The fake API server pinned against the API conventions, through the real `kube` client
//! (and raw HTTP where the wire shape itself is the point).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kshuffle_testkit::apiserver::{ExpiredReason, FakeApiServer, Latencies, Node, Outage};
use kshuffle_testkit::{kube_client, kube_config};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "spark";

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(60), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

fn pod(name: &str, labels: &[(&str, &str)], cpu: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    );
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: "executor".into(),
            image: Some("spark:4".into()),
            resources: Some(ResourceRequirements {
                requests: Some(
                    [
                        ("cpu".to_owned(), Quantity(cpu.into())),
                        ("memory".to_owned(), Quantity("1Gi".into())),
                    ]
                    .into(),
                ),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        }],
        ..PodSpec::default()
    });
    p
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

async fn api(server: &FakeApiServer) -> Api<Pod> {
    Api::namespaced(kube_client(server, NS).unwrap(), NS)
}

/// Sends raw HTTP/1.1 and returns (status code, body as JSON).
async fn raw(server: &FakeApiServer, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let code: u16 = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (
        code,
        serde_json::from_str(body.trim()).unwrap_or(Value::Null),
    )
}

async fn wait_for_phase(api: &Api<Pod>, name: &str, want: &str) -> Pod {
    within(&format!("{name} to be {want}"), async {
        loop {
            let p = api.get(name).await.unwrap();
            if phase(&p) == want {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

#[tokio::test]
async fn the_kubeconfig_points_at_the_server_with_the_namespace() {
    let server = FakeApiServer::start().await.unwrap();
    let config: Value = serde_saphyr::from_str(&server.kubeconfig(NS)).unwrap();
    let current = config["current-context"].as_str().unwrap();
    let context = config["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == current)
        .unwrap();
    assert_eq!(context["context"]["namespace"], NS);
    let cluster = config["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == context["context"]["cluster"])
        .unwrap();
    assert_eq!(cluster["cluster"]["server"], server.url());
    assert!(
        config["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == context["context"]["user"]),
        "the context's user is defined"
    );
}

#[tokio::test]
async fn create_get_list_with_selectors() {
    let server = FakeApiServer::start().await.unwrap();
    let pods = api(&server).await;
    let pp = PostParams::default();
    let a = pods
        .create(
            &pp,
            &pod(
                "exec-1",
                &[("spark-role", "executor"), ("spark-exec-id", "1")],
                "1",
            ),
        )
        .await
        .unwrap();
    pods.create(
        &pp,
        &pod(
            "exec-2",
            &[("spark-role", "executor"), ("spark-exec-id", "2")],
            "1",
        ),
    )
    .await
    .unwrap();
    pods.create(&pp, &pod("driver", &[("spark-role", "driver")], "1"))
        .await
        .unwrap();

    assert_eq!(a.metadata.namespace.as_deref(), Some(NS));
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    assert_eq!(phase(&a), "Pending");
    assert_eq!(
        pods.get("exec-1").await.unwrap().metadata.uid,
        a.metadata.uid
    );

    let names = |l: kube::core::ObjectList<Pod>| -> Vec<String> {
        l.items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect()
    };
    let all = pods.list(&ListParams::default()).await.unwrap();
    let list_rv: u64 = all
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    // At least our three creates; the simulated kubelet may have moved on since.
    assert!(list_rv >= 3 && list_rv <= server.resource_version());
    assert_eq!(names(all), ["driver", "exec-1", "exec-2"]);
    let execs = pods
        .list(&ListParams::default().labels("spark-role=executor,spark-exec-id in (2,3)"))
        .await
        .unwrap();
    assert_eq!(names(execs), ["exec-2"]);
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=driver"))
        .await
        .unwrap();
    assert_eq!(names(by_name), ["driver"]);

    let other: Api<Pod> = Api::namespaced(kube_client(&server, NS).unwrap(), "other");
    assert!(
        other
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let calls = server.calls();
    assert_eq!((calls.create, calls.get, calls.list), (3, 1, 4));
}

#[tokio::test]
async fn errors_are_status_objects_shaped_like_the_real_servers() {
    let server = FakeApiServer::start().await.unwrap();
    let pods = api(&server).await;
    pods.create(&PostParams::default(), &pod("p", &[], "1"))
        .await
        .unwrap();

    let kube::Error::Api(s) = pods.get("nope").await.unwrap_err() else {
        panic!("not an API error")
    };
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    assert_eq!(s.message, "pods \"nope\" not found");

    let kube::Error::Api(s) = pods
        .create(&PostParams::default(), &pod("p", &[], "1"))
        .await
        .unwrap_err()
    else {
        panic!("not an API error")
    };
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));

    // The exact wire shape.
    let (code, body) = raw(&server, "GET", "/api/v1/namespaces/spark/pods/nope", "").await;
    assert_eq!(code, 404);
    assert_eq!(
        body,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods \"nope\" not found", "reason": "NotFound",
            "details": { "name": "nope", "kind": "pods" }, "code": 404,
        })
    );
    let (code, body) = raw(
        &server,
        "POST",
        "/api/v1/namespaces/spark/pods",
        "{not json",
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    let (code, body) = raw(
        &server,
        "POST",
        "/api/v1/namespaces/spark/pods",
        r#"{"metadata":{"name":"x"},"spec":{"containers":[]}}"#,
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
    let (code, body) = raw(
        &server,
        "GET",
        "/api/v1/namespaces/spark/pods?labelSelector=a%20in%20x",
        "",
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    let (code, body) = raw(
        &server,
        "GET",
        "/api/v1/namespaces/spark/pods?fieldSelector=spec.image%3Dx",
        "",
    )
    .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (400, Some("field label not supported: spec.image"))
    );
    let (code, _) = raw(&server, "GET", "/apis/apps/v1/deployments", "").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn pods_are_scheduled_within_node_capacity() {
    let server = FakeApiServer::builder()
        .nodes(vec![Node::new("n1", 2, 8)])
        .start()
        .await
        .unwrap();
    let pods = api(&server).await;
    for i in 1..=3 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), &[], "1"))
            .await
            .unwrap();
    }
    let p1 = wait_for_phase(&pods, "p1", "Running").await;
    assert_eq!(p1.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
    assert!(p1.status.as_ref().unwrap().pod_ip.is_some());
    wait_for_phase(&pods, "p2", "Running").await;
    // The third does not fit: it stays Pending, marked Unschedulable once.
    let p3 = within("p3 to be unschedulable", async {
        loop {
            let p = pods.get("p3").await.unwrap();
            let conds = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            if conds
                .iter()
                .any(|c| c.reason.as_deref() == Some("Unschedulable"))
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(phase(&p3), "Pending");
    assert_eq!(server.max_pending(), 3);

    // Freeing a slot lets it run.
    pods.delete("p1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_for_phase(&pods, "p3", "Running").await;
}

#[tokio::test]
async fn deletion_follows_the_pod_strategy() {
    let server = FakeApiServer::builder()
        .latencies(Latencies {
            terminate: Duration::from_millis(200),
            ..Latencies::default()
        })
        .nodes(vec![Node::new("n1", 1, 8)])
        .start()
        .await
        .unwrap();
    let pods = api(&server).await;
    pods.create(&PostParams::default(), &pod("running", &[], "1"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("unbound", &[], "1"))
        .await
        .unwrap();
    wait_for_phase(&pods, "running", "Running").await;

    // Bound and running: graceful, the object stays with a deletionTimestamp until the kubelet is done.
    let either = pods
        .delete("running", &DeleteParams::default())
        .await
        .unwrap();
    let terminating = either.left().expect("the object while it terminates");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    assert!(pods.get("running").await.is_ok());
    // Not bound to a node: gone at once.
    pods.delete("unbound", &DeleteParams::default())
        .await
        .unwrap();
    // (it may have been bound in the meantime once capacity frees; either way it goes)
    within("running to disappear", async {
        while pods.get("running").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let kube::Error::Api(s) = pods
        .delete("running", &DeleteParams::default())
        .await
        .unwrap_err()
    else {
        panic!()
    };
    assert_eq!(s.code, 404);
}

#[tokio::test]
async fn delete_collection_by_label_and_phase() {
    let server = FakeApiServer::builder()
        .nodes(vec![Node::new("n1", 1, 8)])
        .start()
        .await
        .unwrap();
    let pods = api(&server).await;
    for (name, id) in [("e1", "1"), ("e2", "2"), ("e3", "3")] {
        pods.create(
            &PostParams::default(),
            &pod(name, &[("spark-exec-id", id)], "1"),
        )
        .await
        .unwrap();
    }
    wait_for_phase(&pods, "e1", "Running").await;
    // What Spark's allocator sends for excess pending pods.
    let lp = ListParams::default()
        .labels("spark-exec-id in (1,2)")
        .fields("status.phase=Pending");
    let deleted = pods
        .delete_collection(&DeleteParams::default(), &lp)
        .await
        .unwrap();
    let names: Vec<_> = deleted
        .left()
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["e2"]);
    let left: Vec<_> = server
        .pods(NS)
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(left, ["e1", "e3"]);
    assert_eq!(server.calls().delete_collection, 1);
}

#[tokio::test]
async fn watch_replays_from_a_resource_version_and_sends_bookmarks() {
    let server = FakeApiServer::builder()
        .bookmark_interval(Duration::from_millis(20))
        .start()
        .await
        .unwrap();
    let pods = api(&server).await;
    pods.create(&PostParams::default(), &pod("before", &[("app", "a")], "1"))
        .await
        .unwrap();
    let rv = server.resource_version().to_string();
    pods.create(&PostParams::default(), &pod("after", &[("app", "a")], "1"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("other", &[("app", "b")], "1"))
        .await
        .unwrap();

    let wp = WatchParams::default().labels("app=a");
    let mut stream = pods.watch(&wp, &rv).await.unwrap().boxed();
    // The simulated scheduler and kubelet may modify "before" after `rv` was read, so
    // MODIFIED events can come first; the first ADDED must be "after", not a replay of
    // "before" (created at or before `rv`) nor "other" (outside the selector).
    let added = within("first ADDED", async {
        loop {
            match stream.try_next().await.unwrap().unwrap() {
                WatchEvent::Added(p) => break p,
                WatchEvent::Modified(_) => {}
                other => panic!("expected ADDED or MODIFIED, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(added.metadata.name.as_deref(), Some("after"));

    // Removing the label is a DELETED for this watch.
    let patch = json!({ "metadata": { "labels": { "app": null } } });
    pods.patch("after", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let mut saw_delete = false;
    let mut saw_bookmark = false;
    within("delete and bookmark", async {
        while !(saw_delete && saw_bookmark) {
            match stream.try_next().await.unwrap().unwrap() {
                WatchEvent::Deleted(p) => {
                    assert_eq!(p.metadata.name.as_deref(), Some("after"));
                    saw_delete = true;
                }
                WatchEvent::Bookmark(b) => {
                    let brv: u64 = b.metadata.resource_version.parse().unwrap();
                    assert!(brv <= server.resource_version());
                    saw_bookmark = true;
                }
                WatchEvent::Modified(p) if p.metadata.name.as_deref() == Some("after") => {
                    // status updates from the simulated kubelet before the patch
                }
                WatchEvent::Modified(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn too_old_resource_version_is_a_410_error_event() {
    for reason in [ExpiredReason::Expired, ExpiredReason::Gone] {
        let server = FakeApiServer::builder()
            .history_limit(3)
            .expired_reason(reason)
            .start()
            .await
            .unwrap();
        let pods = api(&server).await;
        for i in 0..6 {
            pods.create(&PostParams::default(), &pod(&format!("p{i}"), &[], "1"))
                .await
                .unwrap();
        }
        let mut stream = pods
            .watch(&WatchParams::default(), "1")
            .await
            .unwrap()
            .boxed();
        let ev = within("error event", stream.try_next())
            .await
            .unwrap()
            .unwrap();
        let WatchEvent::Error(s) = ev else {
            panic!("expected ERROR, got {ev:?}")
        };
        assert_eq!(s.code, 410);
        let want = if reason == ExpiredReason::Gone {
            "Gone"
        } else {
            "Expired"
        };
        assert_eq!(s.reason, want);
        assert!(
            s.message.starts_with("too old resource version: 1 ("),
            "{}",
            s.message
        );
    }
}

#[tokio::test]
async fn list_pages_and_expired_continue_tokens() {
    // The simulated scheduler stays away (no events besides ours).
    let server = FakeApiServer::builder()
        .history_limit(4)
        .latencies(Latencies {
            schedule: Duration::from_secs(3600),
            ..Latencies::default()
        })
        .start()
        .await
        .unwrap();
    let pods = api(&server).await;
    for i in 0..5 {
        server
            .insert_pod(NS, pod(&format!("p{i}"), &[], "1"))
            .unwrap();
    }
    let mut lp = ListParams::default().limit(2);
    let mut names = Vec::new();
    loop {
        let page = pods.list(&lp).await.unwrap();
        names.extend(page.items.into_iter().filter_map(|p| p.metadata.name));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);

    let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
    let token = first.metadata.continue_.unwrap();
    for i in 5..15 {
        server
            .insert_pod(NS, pod(&format!("p{i}"), &[], "1"))
            .unwrap();
    }
    let kube::Error::Api(s) = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap_err()
    else {
        panic!()
    };
    assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn kube_watcher_relists_after_410_and_outage() {
    let server = FakeApiServer::builder()
        .history_limit(5)
        .start()
        .await
        .unwrap();
    let pods = api(&server).await;
    server.insert_pod(NS, pod("a", &[], "1")).unwrap();
    let cfg = watcher::Config::default().timeout(5);
    let mut stream = watcher::watcher(pods.clone(), cfg).boxed();
    let mut inits = 0;
    let mut seen = std::collections::BTreeSet::new();
    // Initial list.
    within("first InitDone", async {
        loop {
            match stream.next().await.unwrap() {
                Ok(watcher::Event::InitDone) => break,
                Ok(watcher::Event::Init) => inits += 1,
                Ok(watcher::Event::InitApply(p)) => {
                    seen.insert(p.metadata.name.unwrap());
                }
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(inits, 1);
    // Cut the connection and change more than the history keeps, then come back.
    server.start_outage(Outage::Refuse);
    for i in 0..10 {
        server
            .insert_pod(NS, pod(&format!("b{i}"), &[], "1"))
            .unwrap();
    }
    let calls_before = server.calls();
    server.end_outage();
    let mut saw_410 = false;
    within("relist with every pod", async {
        loop {
            match stream.next().await.unwrap() {
                Ok(watcher::Event::Init) => {
                    inits += 1;
                    seen.clear();
                }
                Ok(watcher::Event::InitApply(p)) => {
                    seen.insert(p.metadata.name.unwrap());
                }
                Ok(watcher::Event::InitDone) if inits >= 2 && seen.len() == 11 => break,
                Ok(_) => {}
                Err(watcher::Error::WatchError(s)) if s.code == 410 => saw_410 = true,
                // Transport errors while the server comes back are expected.
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(
        saw_410,
        "the watch resumed from a version older than the history"
    );
    let after = server.calls();
    assert!(after.list > calls_before.list, "relisted");
    assert!(after.watch > calls_before.watch, "re-watched");
}

#[tokio::test]
async fn outages_answer_5xx_or_refuse_then_recover() {
    let server = FakeApiServer::start().await.unwrap();
    let mut config = kube_config(&server, NS);
    config.default_retry = false;
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), NS);
    server.start_outage(Outage::Unavailable);
    let kube::Error::Api(s) = pods.list(&ListParams::default()).await.unwrap_err() else {
        panic!()
    };
    assert_eq!((s.code, s.reason.as_str()), (503, "ServiceUnavailable"));
    server.start_outage(Outage::InternalError);
    let kube::Error::Api(s) = pods.get("x").await.unwrap_err() else {
        panic!()
    };
    assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    server.start_outage(Outage::Refuse);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let err = pods.list(&ListParams::default()).await.unwrap_err();

    assert!(
        !matches!(err, kube::Error::Api(_)),
        "a transport error, got {err:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(server.addr()).await.is_err(),
        "port closed"
    );
    server.end_outage();
    within("recovery", async {
        while pods.list(&ListParams::default()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // 5xx answers count as calls; refused connections never reach the server.
    assert_eq!(server.calls().get, 1);
}

#[tokio::test]
async fn kubelet_failures_and_evictions_are_visible() {
    let server = FakeApiServer::start().await.unwrap();
    let pods = api(&server).await;
    pods.create(&PostParams::default(), &pod("a", &[], "1"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("b", &[], "1"))
        .await
        .unwrap();
    wait_for_phase(&pods, "a", "Running").await;
    wait_for_phase(&pods, "b", "Running").await;
    assert!(server.evict_pod(NS, "a"));
    assert!(server.exit_pod(NS, "b", 1));
    assert!(!server.exit_pod(NS, "nope", 1));
    let a = pods.get("a").await.unwrap();
    assert_eq!(phase(&a), "Failed");
    assert_eq!(
        a.status.as_ref().unwrap().reason.as_deref(),
        Some("Evicted")
    );
    let b = pods.get("b").await.unwrap();
    let exit = b.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap()
        .exit_code;
    assert_eq!(exit, 1);
    // Terminal pods are deleted at once, whatever the grace period.
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(server.pod(NS, "a").is_none());
}

#[tokio::test]
async fn kube_default_retry_rides_out_a_short_503() {
    let server = std::sync::Arc::new(FakeApiServer::start().await.unwrap());
    let pods = api(&server).await;
    server.start_outage(Outage::Unavailable);
    let s2 = std::sync::Arc::clone(&server);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s2.end_outage();
    });
    within("list through retries", pods.list(&ListParams::default()))
        .await
        .unwrap();
    assert!(
        server.calls().list >= 2,
        "the 503s were retried: {:?}",
        server.calls()
    );
}

#[tokio::test]
async fn an_outage_window_ends_by_itself() {
    let server = FakeApiServer::start().await.unwrap();
    let mut config = kube_config(&server, NS);
    config.default_retry = false;
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), NS);
    server.outage_for(Outage::InternalError, Duration::from_millis(100));
    let kube::Error::Api(s) = pods.list(&ListParams::default()).await.unwrap_err() else {
        panic!()
    };
    assert_eq!(s.code, 500);
    within("the window to end", async {
        while pods.list(&ListParams::default()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
