//! The webhook as the API server calls it: testkit's fake API server runs the mutating
//! admission plugin (it calls webhooks over HTTPS, verifying the `caBundle`, on pod CREATE).
//! The `MutatingWebhookConfiguration` is the one `kubectl kustomize sidecar/deploy` renders,
//! with a test CA's bundle in place of cert-manager's; the webhook serves a certificate for
//! the Service's DNS name. Pods are created with the real `kube` client. No cluster runs here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kshuffle_sidecar::inject::Config;
use kshuffle_sidecar::webhook::{self, Settings, tls::CertStore};
use kshuffle_testkit::FakeApiServer;
use kube::Api;
use kube::api::PostParams;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const REVIEW: &str = include_str!("fixtures/executor-review.json");
const WEBHOOK_NS: &str = "kshuffle-sidecar";
const SERVICE: &str = "kshuffle-webhook";

/// (CA PEM, server cert PEM, key PEM) for the webhook Service's DNS name.
fn pki() -> (String, String, String) {
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
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// The rendered configuration, with `ca` as every webhook's caBundle.
fn configuration(ca_pem: &str) -> MutatingWebhookConfiguration {
    let kubectl = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(deploy)
        .output()
        .unwrap();
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

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// The fixture's executor pod, renamed, in `ns`, with extra labels.
fn executor(name: &str, ns: &str, extra: &[(&str, &str)]) -> Pod {
    let review: Value = serde_json::from_str(REVIEW).unwrap();
    let mut pod: Pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    pod.metadata.name = Some(name.to_owned());
    pod.metadata.namespace = Some(ns.to_owned());
    pod.metadata.managed_fields = None;
    let labels: &mut BTreeMap<String, String> = pod.metadata.labels.as_mut().unwrap();
    for (k, v) in extra {
        labels.insert((*k).to_owned(), (*v).to_owned());
    }
    pod
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

async fn guard<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("hung")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_injects_opted_in_executors_through_the_rendered_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    let certs = Arc::new(
        CertStore::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = Config {
        image: "registry.example/kshuffle-sidecar:0.1.0".to_owned(),
        ..Config::default()
    };
    let hook = tokio::spawn(webhook::serve(
        listener,
        Arc::new(certs.server_config().unwrap()),
        config,
        Settings::default(),
        stop.clone(),
    ));

    let server = FakeApiServer::start().await.unwrap();
    server.set_service_address(WEBHOOK_NS, SERVICE, addr);
    let client = kshuffle_testkit::kube_client(&server, "default").unwrap();
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    guard(configs.create(&PostParams::default(), &configuration(&ca)))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [
        namespace("spark-jobs", &[("kshuffle.io/inject", "enabled")]),
        namespace("team-a", &[]),
        namespace("locked", &[("kshuffle.io/inject", "disabled")]),
    ] {
        guard(namespaces.create(&PostParams::default(), &ns))
            .await
            .unwrap();
    }
    let create = |ns: &str, pod: Pod| {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        async move { guard(pods.create(&PostParams::default(), &pod)).await }
    };

    // Namespace opt-in: injected, as stored by the API server.
    let created = create("spark-jobs", executor("exec-1", "spark-jobs", &[]))
        .await
        .unwrap();
    assert_eq!(
        containers(&created),
        ["spark-kubernetes-executor", "kshuffle"]
    );
    let stored = server.pod("spark-jobs", "exec-1").unwrap();
    assert_eq!(
        containers(&stored),
        ["spark-kubernetes-executor", "kshuffle"]
    );
    assert!(
        stored
            .metadata
            .annotations
            .unwrap()
            .contains_key("kshuffle.io/injected")
    );
    assert_eq!(
        stored.spec.unwrap().termination_grace_period_seconds,
        Some(3600)
    );
    let calls = server.webhook_calls();
    assert_eq!(calls, 1);

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
        let created = create(ns, executor(name, ns, &extra)).await.unwrap();
        assert_eq!(
            containers(&created),
            ["spark-kubernetes-executor"],
            "{ns}/{name}"
        );
    }
    assert_eq!(
        server.webhook_calls(),
        calls,
        "selectors kept them away from the webhook"
    );

    // Pod opt-in in a namespace without the label.
    let created = create(
        "team-a",
        executor("exec-5", "team-a", &[("kshuffle.io/inject", "true")]),
    )
    .await
    .unwrap();
    assert_eq!(
        containers(&created),
        ["spark-kubernetes-executor", "kshuffle"]
    );

    // failurePolicy Fail: with the webhook down, opted-in executor pods are refused (Spark's
    // allocator retries), other pods are created as usual.
    stop.cancel();
    guard(hook).await.unwrap().unwrap();
    let refused = create("spark-jobs", executor("exec-6", "spark-jobs", &[]))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("failed calling webhook"),
        "{refused}"
    );
    assert!(server.pod("spark-jobs", "exec-6").is_none());
    let created = create("team-a", executor("exec-7", "team-a", &[]))
        .await
        .unwrap();
    assert_eq!(containers(&created), ["spark-kubernetes-executor"]);
}
