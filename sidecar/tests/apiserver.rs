//! Injection as a cluster does it: testkit's fake API server runs the mutating admission
//! plugin, calling webhooks over HTTPS (verifying the `caBundle`) on pod CREATE, exactly as
//! kube-apiserver does, and stores the patched pod. The `MutatingWebhookConfiguration` is the
//! one `kubectl kustomize sidecar/deploy` renders, with a test CA's bundle in place of
//! cert-manager's; the webhook serves a certificate for its Service's DNS name
//! (`kshuffle-webhook.kshuffle-sidecar.svc`), which the fake maps to the webhook's address.
//! Pods are created with the real `kube` client. No cluster runs here.
//!
//! - `only_opted_in_executors_are_sent_to_the_webhook`: the rendered selectors (namespace and
//!   pod opt-in and opt-out, drivers), against the webhook served in-process
//!   (`kshuffle_sidecar::webhook::serve`);
//! - `executor_pods_created_through_the_api_server_are_injected_by_the_real_webhook`: what the
//!   `kshuffle-sidecar webhook` binary does to a pod, as stored;
//! - `with_the_webhook_down_failure_policy_fail_rejects_opted_in_executors_only`: the
//!   rendered `failurePolicy` when the binary is gone, and `Ignore` for contrast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kshuffle_sidecar::inject::Config;
use kshuffle_sidecar::webhook::{self, Settings, tls::CertStore};
use kshuffle_testkit::{FakeApiServer, kustomize};
use kube::Api;
use kube::api::PostParams;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod common;

use common::WebhookProcess;

const REVIEW: &str = include_str!("fixtures/executor-review.json");
const WEBHOOK_NS: &str = "kshuffle-sidecar";
const SERVICE: &str = "kshuffle-webhook";

// === certificates and the rendered configuration ===

/// A test CA and the webhook's certificate for the Service's DNS name, as files.
struct Pki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kshuffle test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names = vec![format!("{SERVICE}.{WEBHOOK_NS}.svc")];
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert: cert_path,
        key: key_path,
        _dir: dir,
    }
}

/// The MutatingWebhookConfiguration of `sidecar/deploy`, as rendered, with `ca_pem` as every
/// webhook's caBundle.
fn rendered_config(ca_pem: &str) -> MutatingWebhookConfiguration {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let docs = kustomize::render(&dir).unwrap_or_else(|e| panic!("{e}"));
    let doc = kustomize::one(&docs, "MutatingWebhookConfiguration").unwrap();
    let mut config: MutatingWebhookConfiguration = serde_json::from_value(doc.clone()).unwrap();
    for hook in config.webhooks.iter_mut().flatten() {
        hook.client_config.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
    }
    config
}

// === the webhook, in-process or as the binary ===

fn start_webhook_binary(pki: &Pki) -> WebhookProcess {
    let image = ["--image", "ghcr.io/kshuffle/kshuffle-sidecar:0.1.0"];
    WebhookProcess::spawn(&pki.cert, &pki.key, &image)
}

/// Serves the webhook in this process until `stop`; its address.
async fn start_webhook_in_process(pki: &Pki, stop: CancellationToken) -> SocketAddr {
    let certs = Arc::new(CertStore::load(&pki.cert, &pki.key).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config {
        image: "registry.example/kshuffle-sidecar:0.1.0".to_owned(),
        ..Config::default()
    };
    tokio::spawn(webhook::serve(
        listener,
        Arc::new(webhook::tls::server_config(&certs).unwrap()),
        config,
        Settings::default(),
        stop,
    ));
    addr
}

// === the API server side ===

/// A fake API server that maps the webhook Service to `webhook`, with the rendered
/// configuration (trusting `ca_pem`) created in it.
async fn api_server(webhook: SocketAddr, ca_pem: &str) -> (FakeApiServer, kube::Client) {
    let server = FakeApiServer::builder()
        .webhook_service(WEBHOOK_NS, SERVICE, webhook)
        .start()
        .await
        .unwrap();
    let client = kshuffle_testkit::kube_client(&server, "default").unwrap();
    guard(
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &rendered_config(ca_pem)),
    )
    .await
    .unwrap();
    (server, client)
}

/// The labels of a namespace whose executors get the sidecar.
const OPTED_IN: &[(&str, &str)] = &[("kshuffle.io/inject", "enabled")];

async fn namespace(client: &kube::Client, name: &str, labels: &[(&str, &str)]) {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } })).unwrap();
    guard(Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns))
        .await
        .unwrap();
}

/// Spark's executor pod of the review fixture, renamed, with extra labels.
fn executor_pod(name: &str, extra_labels: &[(&str, &str)]) -> Pod {
    let review: Value = serde_json::from_str(REVIEW).unwrap();
    let mut pod: Pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    pod.metadata.name = Some(name.to_owned());
    pod.metadata.namespace = None;
    pod.metadata.managed_fields = None;
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    for (k, v) in extra_labels {
        labels.insert((*k).to_owned(), (*v).to_owned());
    }
    pod
}

/// Creates `pod` in `ns` through the API server (admission included).
async fn create(client: &kube::Client, ns: &str, pod: Pod) -> Result<Pod, kube::Error> {
    guard(Api::<Pod>::namespaced(client.clone(), ns).create(&PostParams::default(), &pod)).await
}

fn containers(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect()
}

fn mounts_of(pod: &Pod, container: &str) -> Vec<(String, String)> {
    pod.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == container)
        .unwrap_or_else(|| panic!("no container {container}"))
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect()
}

async fn guard<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("hung")
}

const INJECTED: [&str; 2] = ["spark-kubernetes-executor", "kshuffle"];
const UNCHANGED: [&str; 1] = ["spark-kubernetes-executor"];

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_opted_in_executors_are_sent_to_the_webhook() {
    let pki = pki();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let webhook = start_webhook_in_process(&pki, stop).await;
    let (server, client) = api_server(webhook, &pki.ca_pem).await;
    namespace(&client, "spark-jobs", OPTED_IN).await;
    namespace(&client, "team-a", &[]).await;
    namespace(&client, "locked", &[("kshuffle.io/inject", "disabled")]).await;

    // Opted in by its namespace: sent to the webhook and injected.
    let created = create(&client, "spark-jobs", executor_pod("exec-1", &[]))
        .await
        .unwrap();
    assert_eq!(containers(&created), INJECTED);
    assert_eq!(server.webhook_calls(), 1);

    // Opt-out label in an enabled namespace; unlabelled pod in another namespace; a pod
    // opting in inside a locked namespace; a driver: none is sent to the webhook at all.
    for (ns, name, extra) in [
        (
            "spark-jobs",
            "exec-2",
            vec![("kshuffle.io/inject", "false")],
        ),
        ("team-a", "exec-3", vec![]),
        ("locked", "exec-4", vec![("kshuffle.io/inject", "true")]),
        ("spark-jobs", "driver", vec![("spark-role", "driver")]),
    ] {
        let created = create(&client, ns, executor_pod(name, &extra))
            .await
            .unwrap();
        assert_eq!(containers(&created), UNCHANGED, "{ns}/{name}");
    }
    assert_eq!(
        server.webhook_calls(),
        1,
        "selectors kept them away from the webhook"
    );

    // Opted in by the pod's own label in a namespace without one: the second webhook.
    let created = create(
        &client,
        "team-a",
        executor_pod("exec-5", &[("kshuffle.io/inject", "true")]),
    )
    .await
    .unwrap();
    assert_eq!(containers(&created), INJECTED);
    assert_eq!(server.webhook_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_pods_created_through_the_api_server_are_injected_by_the_real_webhook() {
    let pki = pki();
    let webhook = start_webhook_binary(&pki);
    let (server, client) = api_server(webhook.addr, &pki.ca_pem).await;
    namespace(&client, "spark-jobs", OPTED_IN).await;

    let created = create(&client, "spark-jobs", executor_pod("exec-1", &[]))
        .await
        .unwrap();
    assert_eq!(containers(&created), INJECTED);
    let exec_local: Vec<(String, String)> = mounts_of(&created, "spark-kubernetes-executor")
        .into_iter()
        .filter(|(n, _)| n == "spark-local-dir-1")
        .collect();
    assert_eq!(exec_local.len(), 1);
    assert!(
        mounts_of(&created, "kshuffle").contains(&exec_local[0]),
        "the sidecar mounts spark-local-dir-1 at the executor's path"
    );
    // Stored as injected: the marker annotation, and a grace period long enough to serve the
    // shuffle output after the executor is told to stop.
    let stored = server.pod("spark-jobs", "exec-1").unwrap();
    assert_eq!(containers(&stored), INJECTED);
    let annotations = stored.metadata.annotations.clone().unwrap_or_default();
    assert!(
        annotations.contains_key("kshuffle.io/injected"),
        "{annotations:?}"
    );
    assert_eq!(
        stored.spec.unwrap().termination_grace_period_seconds,
        Some(3600)
    );
    assert_eq!(server.webhook_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_webhook_down_failure_policy_fail_rejects_opted_in_executors_only() {
    let pki = pki();
    let webhook = start_webhook_binary(&pki);
    let (server, client) = api_server(webhook.addr, &pki.ca_pem).await;
    namespace(&client, "spark-jobs", OPTED_IN).await;
    drop(webhook);

    // An opted-in executor is refused (Spark's allocator retries) and not stored.
    let err = create(&client, "spark-jobs", executor_pod("exec-1", &[]))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (500, "InternalError")
    );
    assert!(
        status.message.starts_with(
            "Internal error occurred: failed calling webhook \"namespace.sidecar.kshuffle.io\": failed to call webhook: Post \"https://kshuffle-webhook.kshuffle-sidecar.svc:443/mutate?timeout=5s\""
        ),
        "{}",
        status.message
    );
    assert!(server.pods("spark-jobs").is_empty());
    // Pods the webhooks do not select are not affected by the outage.
    let driver = create(
        &client,
        "spark-jobs",
        executor_pod("driver", &[("spark-role", "driver")]),
    )
    .await
    .unwrap();
    assert_eq!(containers(&driver), UNCHANGED);

    // The same configuration with failurePolicy Ignore: admitted unchanged.
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    guard(configs.delete("kshuffle-sidecar", &Default::default()))
        .await
        .unwrap();
    let mut ignore = rendered_config("");
    for hook in ignore.webhooks.iter_mut().flatten() {
        hook.failure_policy = Some("Ignore".into());
    }
    guard(configs.create(&PostParams::default(), &ignore))
        .await
        .unwrap();
    let admitted = create(&client, "spark-jobs", executor_pod("exec-2", &[]))
        .await
        .unwrap();
    assert_eq!(containers(&admitted), UNCHANGED);
}
