//! Injection as a cluster does it: the `kshuffle-sidecar webhook` binary serves HTTPS with a
//! certificate for its Service name (`kshuffle-webhook.kshuffle-sidecar.svc`, from a test CA),
//! the MutatingWebhookConfiguration of `sidecar/deploy` (rendered by `kubectl kustomize`, the
//! CA put in its `caBundle` as cert-manager's injector would) is created in testkit's fake API
//! server, and Spark's executor pod is created there with the real `kube` client: the fake
//! API server calls the webhook over HTTPS exactly as kube-apiserver does and stores the
//! patched pod. No cluster is involved; the fake maps the Service to the binary's address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kshuffle_testkit::FakeApiServer;
use kube::Api;
use kube::api::PostParams;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};

const REVIEW: &str = include_str!("fixtures/executor-review.json");
const SERVICE_DNS: &str = "kshuffle-webhook.kshuffle-sidecar.svc";

struct Webhook {
    child: Child,
    addr: SocketAddr,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_webhook() -> Webhook {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![SERVICE_DNS.to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kshuffle-sidecar"))
        .arg("webhook")
        .arg("--tls-cert-file")
        .arg(&cert_path)
        .arg("--tls-key-file")
        .arg(&key_path)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--image", "ghcr.io/kshuffle/kshuffle-sidecar:0.1.0"])
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the webhook did not log that it listens");
        if line.contains("webhook listening") {
            break;
        }
    }
    Webhook {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        ca_pem: ca_cert.pem(),
        _dir: dir,
    }
}

/// The MutatingWebhookConfiguration of `sidecar/deploy`, as rendered, with the CA injected.
fn rendered_config(ca_pem: &str) -> MutatingWebhookConfiguration {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let kubectl = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {kubectl:?} ({e}); install kubectl or set KUBECTL"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let doc = docs
        .into_iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    let mut config: MutatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
    for hook in config.webhooks.iter_mut().flatten() {
        hook.client_config.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
    }
    config
}

/// Spark's executor pod of the review fixture, with its namespace cleared.
fn executor_pod(extra_labels: &[(&str, &str)]) -> Pod {
    let review: Value = serde_json::from_str(REVIEW).unwrap();
    let mut pod: Pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    pod.metadata.namespace = None;
    pod.metadata.managed_fields = None;
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    for (k, v) in extra_labels {
        labels.insert((*k).to_owned(), (*v).to_owned());
    }
    pod
}

async fn namespace(client: &kube::Client, name: &str, labels: Value) {
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } })).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
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

#[tokio::test]
async fn executor_pods_created_through_the_api_server_are_injected_by_the_real_webhook() {
    let webhook = start_webhook();
    let server = FakeApiServer::builder()
        .webhook_service("kshuffle-sidecar", "kshuffle-webhook", webhook.addr)
        .start()
        .await
        .unwrap();
    let client = kshuffle_testkit::kube_client(&server, "default").unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &rendered_config(&webhook.ca_pem))
        .await
        .unwrap();
    namespace(
        &client,
        "spark-jobs",
        json!({ "kshuffle.io/inject": "enabled" }),
    )
    .await;
    namespace(&client, "other", json!({})).await;

    // Opted in by its namespace: injected.
    let created = Api::<Pod>::namespaced(client.clone(), "spark-jobs")
        .create(&PostParams::default(), &executor_pod(&[]))
        .await
        .unwrap();
    let names: Vec<&str> = created
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["spark-kubernetes-executor", "kshuffle"]);
    let exec_local: Vec<(String, String)> = mounts_of(&created, "spark-kubernetes-executor")
        .into_iter()
        .filter(|(n, _)| n == "spark-local-dir-1")
        .collect();
    assert_eq!(exec_local.len(), 1);
    assert!(
        mounts_of(&created, "kshuffle").contains(&exec_local[0]),
        "the sidecar mounts spark-local-dir-1 at the executor's path"
    );
    let annotations = created.metadata.annotations.clone().unwrap_or_default();
    assert!(
        annotations.contains_key("kshuffle.io/injected"),
        "{annotations:?}"
    );
    // Stored as injected.
    let stored = server
        .pod("spark-jobs", created.metadata.name.as_deref().unwrap())
        .unwrap();
    assert_eq!(stored.spec.unwrap().containers.len(), 2);

    // Not opted in (namespace unlabelled, pod unlabelled): unchanged.
    let plain = Api::<Pod>::namespaced(client.clone(), "other")
        .create(&PostParams::default(), &executor_pod(&[]))
        .await
        .unwrap();
    assert_eq!(plain.spec.as_ref().unwrap().containers.len(), 1);
    // Opted in by the pod's own label in that namespace: injected (the second webhook).
    let mut by_label = executor_pod(&[("kshuffle.io/inject", "true")]);
    by_label.metadata.name = Some("exec-by-label".into());
    let by_label = Api::<Pod>::namespaced(client.clone(), "other")
        .create(&PostParams::default(), &by_label)
        .await
        .unwrap();
    assert_eq!(by_label.spec.as_ref().unwrap().containers.len(), 2);
    // A driver pod in the opted-in namespace: unchanged.
    let mut driver = executor_pod(&[("spark-role", "driver")]);
    driver.metadata.name = Some("driver".into());
    let driver = Api::<Pod>::namespaced(client.clone(), "spark-jobs")
        .create(&PostParams::default(), &driver)
        .await
        .unwrap();
    assert_eq!(driver.spec.as_ref().unwrap().containers.len(), 1);
    assert_eq!(server.webhook_calls(), 2);
}

#[tokio::test]
async fn with_the_webhook_down_failure_policy_fail_rejects_opted_in_executors_only() {
    let webhook = start_webhook();
    let server = FakeApiServer::builder()
        .webhook_service("kshuffle-sidecar", "kshuffle-webhook", webhook.addr)
        .start()
        .await
        .unwrap();
    let client = kshuffle_testkit::kube_client(&server, "default").unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &rendered_config(&webhook.ca_pem))
        .await
        .unwrap();
    namespace(
        &client,
        "spark-jobs",
        json!({ "kshuffle.io/inject": "enabled" }),
    )
    .await;
    drop(webhook);

    let err = Api::<Pod>::namespaced(client.clone(), "spark-jobs")
        .create(&PostParams::default(), &executor_pod(&[]))
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

    // The same configuration with failurePolicy Ignore: admitted unchanged.
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    configs
        .delete("kshuffle-sidecar", &Default::default())
        .await
        .unwrap();
    let mut ignore = rendered_config("");
    for hook in ignore.webhooks.iter_mut().flatten() {
        hook.failure_policy = Some("Ignore".into());
    }
    configs
        .create(&PostParams::default(), &ignore)
        .await
        .unwrap();
    let admitted = Api::<Pod>::namespaced(client.clone(), "spark-jobs")
        .create(&PostParams::default(), &executor_pod(&[]))
        .await
        .unwrap();
    assert_eq!(admitted.spec.as_ref().unwrap().containers.len(), 1);

    // Pods the webhooks do not select are not affected by the outage.
    let mut driver = executor_pod(&[("spark-role", "driver")]);
    driver.metadata.name = Some("driver".into());
    Api::<Pod>::namespaced(client.clone(), "spark-jobs")
        .create(&PostParams::default(), &driver)
        .await
        .unwrap();
}
