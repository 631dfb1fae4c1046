//! The real `kubectl` (set `KUBECTL` to another binary) against the fake API server, as a
//! developer uses it on `scripts/sim-cluster.sh`: `apply -f` validates on the server side
//! through the `/openapi/v3` documents (`src/apiserver/openapi.rs`) and creates, a second
//! `apply` of a changed pod patches it, `get` lists; a kind the fake does not serve fails
//! validation as documented in the README's Gaps, and with `--validate=false` is not found in
//! discovery.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use kshuffle_testkit::FakeApiServer;
use kshuffle_testkit::apiserver::Resource;

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    let bin = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
    Command::new(&bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin:?} ({e}); install kubectl or set KUBECTL"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const OBJECTS: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: play
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: play
data:
  a: b
---
apiVersion: v1
kind: Pod
metadata:
  name: p1
  namespace: play
spec:
  containers:
  - name: c
    image: busybox:1.36
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_validates_creates_and_patches_against_the_fake() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("kshuffle-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig("default")).unwrap();
    let manifest = dir.join("objects.yaml");
    std::fs::write(&manifest, OBJECTS).unwrap();
    let file = manifest.to_str().unwrap();

    // Blocking commands off the runtime's workers.
    let run = |args: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kubectl(&kubeconfig, &args)
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let applied = run(args(&["apply", "-f", file])).await.unwrap();
    assert!(applied.status.success(), "{}", text(&applied));
    let out = text(&applied);
    for created in [
        "namespace/play created",
        "configmap/settings created",
        "pod/p1 created",
    ] {
        assert!(out.contains(created), "{out}");
    }
    // Validated on the server side: every create carried fieldValidation=Strict.
    let creates: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(creates.len(), 3, "{creates:?}");
    assert!(
        creates
            .iter()
            .all(|r| r.query.contains("fieldValidation=Strict")),
        "{creates:?}"
    );
    let configmaps = server.objects(Resource::ConfigMaps, "play");
    assert_eq!(configmaps.len(), 1);
    assert_eq!(configmaps[0]["data"]["a"], "b");

    // A changed pod is patched (the last-applied annotation tells kubectl what changed).
    std::fs::write(&manifest, OBJECTS.replace("busybox:1.36", "busybox:1.37")).unwrap();
    let again = run(args(&["apply", "-f", file])).await.unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("pod/p1 configured"),
        "{}",
        text(&again)
    );
    let pod = server.pod("play", "p1").unwrap();
    assert_eq!(
        pod.spec.unwrap().containers[0].image.as_deref(),
        Some("busybox:1.37")
    );

    let listed = run(args(&["get", "pods", "-A", "-o", "name"]))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "pod/p1");

    // A kind the fake does not serve: no OpenAPI operation, so kubectl falls back to client
    // validation, which needs /openapi/v2; without validation kubectl finds no such kind in
    // the discovery documents.
    let account = dir.join("account.yaml");
    std::fs::write(
        &account,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa\n  namespace: play\n",
    )
    .unwrap();
    let account = account.to_str().unwrap();
    let refused = run(args(&["apply", "-f", account])).await.unwrap();
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("failed to download openapi"),
        "{}",
        text(&refused)
    );
    let unvalidated = run(args(&["apply", "--validate=false", "-f", account]))
        .await
        .unwrap();
    assert!(!unvalidated.status.success());
    assert!(
        text(&unvalidated).contains("no matches for kind \"ServiceAccount\" in version \"v1\""),
        "{}",
        text(&unvalidated)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
