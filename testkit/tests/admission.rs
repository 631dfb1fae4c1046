//! Mutating admission webhooks called by the fake API server on pod create, over real HTTPS:
//! a test CA (rcgen) issues the webhook's certificate, a tiny in-test webhook (rustls + hyper)
//! records each `AdmissionReview` and answers as the test tells it, and pods are created with
//! the real `kube` client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use base64::prelude::{BASE64_STANDARD, Engine as _};
use hyper::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kshuffle_testkit::FakeApiServer;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What the test webhook answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `allowed: true` with a JSONPatch adding a label and a container.
    Patch,
    /// `allowed: false`, code 403.
    Deny,
    /// A patch that is base64 of something that is not a JSONPatch.
    BadPatch,
    /// Answers after 5 s.
    Slow,
    /// `allowed: true`, no patch.
    Allow,
}

struct Pki {
    ca_pem: String,
    cert: CertificateDer<'static>,
    key_pem: String,
}

fn pki(names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert: cert.der().clone(),
        key_pem: key.serialize_pem(),
    }
}

struct Hook {
    addr: SocketAddr,
    reviews: Arc<Mutex<Vec<(String, Value)>>>,
    mode: Arc<Mutex<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(mode: Mode, review: &Value) -> Value {
    let uid = review["request"]["uid"].clone();
    let response = match mode {
        Mode::Patch | Mode::Slow => {
            let patch = json!([
                { "op": "add", "path": "/metadata/labels/injected", "value": "yes" },
                { "op": "add", "path": "/spec/containers/-",
                  "value": { "name": "added", "image": "added:1" } },
            ]);
            json!({ "uid": uid, "allowed": true, "patchType": "JSONPatch",
                    "patch": BASE64_STANDARD.encode(serde_json::to_vec(&patch).unwrap()) })
        }
        Mode::Allow => json!({ "uid": uid, "allowed": true }),
        Mode::Deny => json!({ "uid": uid, "allowed": false,
                              "status": { "code": 403, "message": "no executors today" } }),
        Mode::BadPatch => json!({ "uid": uid, "allowed": true, "patchType": "JSONPatch",
                                  "patch": BASE64_STANDARD.encode(b"{\"not\": \"a patch\"}") }),
    };
    json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response })
}

async fn start_hook(pki: &Pki, mode: Mode) -> Hook {
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![pki.cert.clone()], key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reviews = Arc::new(Mutex::new(Vec::new()));
    let mode = Arc::new(Mutex::new(mode));
    let (r, m) = (Arc::clone(&reviews), Arc::clone(&mode));
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, r, m) = (acceptor.clone(), Arc::clone(&r), Arc::clone(&m));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let (r, m) = (Arc::clone(&r), Arc::clone(&m));
                    async move {
                        let target = req.uri().to_string();
                        let bytes = axum::body::to_bytes(Body::new(req.into_body()), 1 << 22)
                            .await
                            .unwrap();
                        let review: Value = serde_json::from_slice(&bytes).unwrap();
                        r.lock().unwrap().push((target, review.clone()));
                        let mode = *m.lock().unwrap();
                        if mode == Mode::Slow {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        let body = serde_json::to_vec(&answer(mode, &review)).unwrap();
                        Ok::<_, std::convert::Infallible>(Response::new(Body::from(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Hook {
        addr,
        reviews,
        mode,
        task,
    }
}

fn config(
    name: &str,
    client_config: Value,
    failure_policy: &str,
    timeout: i32,
) -> MutatingWebhookConfiguration {
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": name },
        "webhooks": [{
            "name": "pods.test.kshuffle.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": failure_policy,
            "timeoutSeconds": timeout,
            "clientConfig": client_config,
            "rules": [{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                        "resources": ["pods"], "scope": "Namespaced" }],
            "namespaceSelector": { "matchExpressions": [
                { "key": "inject", "operator": "In", "values": ["enabled"] }] },
            "objectSelector": { "matchLabels": { "spark-role": "executor" } },
        }],
    }))
    .unwrap()
}

fn url_config(pki: &Pki, addr: SocketAddr) -> Value {
    json!({ "url": format!("https://localhost:{}/mutate", addr.port()),
            "caBundle": BASE64_STANDARD.encode(pki.ca_pem.as_bytes()) })
}

/// A fake API server with the namespace "opted" that the test configurations select. Keep
/// `server` bound (`server: _server` if unused): dropping it stops the API server.
struct Cluster {
    server: FakeApiServer,
    client: kube::Client,
    configs: Api<MutatingWebhookConfiguration>,
    /// Pods of "opted".
    opted: Api<Pod>,
}

impl Cluster {
    async fn start() -> Self {
        Self::with(FakeApiServer::builder()).await
    }

    async fn with(builder: kshuffle_testkit::apiserver::Builder) -> Self {
        let server = builder.start().await.unwrap();
        let client = kshuffle_testkit::kube_client(&server, "default").unwrap();
        namespace(&client, "opted", &[("inject", "enabled")]).await;
        Cluster {
            configs: Api::all(client.clone()),
            opted: Api::namespaced(client.clone(), "opted"),
            server,
            client,
        }
    }
}

/// Creates `obj` through `api` (admission included).
async fn create<K>(api: &Api<K>, obj: &K) -> kube::Result<K>
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), obj).await
}

/// A pod the test configurations select (`spark-role=executor`).
fn executor(name: &str) -> Pod {
    pod(name, &[("spark-role", "executor")])
}

fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": label_map(labels) },
        "spec": { "containers": [{ "name": "main", "image": "spark:4" }] },
    }))
    .unwrap()
}

async fn namespace(client: &kube::Client, name: &str, labels: &[(&str, &str)]) {
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": label_map(labels) },
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// `labels` as the map a manifest's `metadata.labels` is.
fn label_map(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Creates the configuration `name`: one webhook at `addr` (URL, `pki`'s CA bundle); returns it as stored.
async fn add_url_config(
    configs: &Api<MutatingWebhookConfiguration>,
    name: &str,
    pki: &Pki,
    addr: SocketAddr,
    failure_policy: &str,
    timeout: i32,
) -> MutatingWebhookConfiguration {
    let cfg = config(name, url_config(pki, addr), failure_policy, timeout);
    create(configs, &cfg).await.unwrap()
}

/// A webhook answering as `mode` (certificate for "localhost") and a cluster with the
/// configuration "c" calling it by URL under `failure_policy`, timeout 5 s.
async fn hooked(mode: Mode, failure_policy: &str) -> (Hook, Cluster) {
    let pki = pki(&["localhost"]);
    let hook = start_hook(&pki, mode).await;
    let cluster = Cluster::start().await;
    add_url_config(&cluster.configs, "c", &pki, hook.addr, failure_policy, 5).await;
    (hook, cluster)
}

/// Deletes the configuration `name`.
async fn delete_config(configs: &Api<MutatingWebhookConfiguration>, name: &str) {
    configs
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

/// The configurations stored.
async fn list_configs(
    configs: &Api<MutatingWebhookConfiguration>,
) -> Vec<MutatingWebhookConfiguration> {
    configs.list(&ListParams::default()).await.unwrap().items
}

/// The API error that creating the executor pod `name` is refused with.
async fn refused(pods: &Api<Pod>, name: &str) -> kube::core::Status {
    api_error(create(pods, &executor(name)).await.unwrap_err())
}

/// `err` is a failed webhook call: 500 InternalError.
fn assert_internal_error(err: &kube::core::Status) {
    assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
}

/// `err`'s message contains `part`.
fn assert_message_has(err: &kube::core::Status, part: &str) {
    assert!(
        err.message.contains(part),
        "{part:?} not in {}",
        err.message
    );
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn containers(p: &Pod) -> Vec<String> {
    p.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect()
}

#[tokio::test]
async fn matching_pods_are_patched_and_the_review_is_the_real_servers() {
    let pki = pki(&["localhost"]);
    let hook = start_hook(&pki, Mode::Patch).await;
    let Cluster {
        server,
        client,
        configs,
        opted,
    } = Cluster::start().await;
    let created = add_url_config(&configs, "test", &pki, hook.addr, "Fail", 5).await;
    // Stored with the server's defaults.
    let wh = &created.webhooks.as_ref().unwrap()[0];
    assert_eq!(wh.reinvocation_policy.as_deref(), Some("Never"));
    assert_eq!(wh.match_policy.as_deref(), Some("Equivalent"));
    assert_eq!(list_configs(&configs).await.len(), 1);

    let p = create(&opted, &executor("exec-1")).await.unwrap();
    assert_eq!(containers(&p), ["main", "added"]);
    assert_eq!(p.metadata.labels.as_ref().unwrap()["injected"], "yes");
    // What is stored is what was answered.
    assert_eq!(
        containers(&server.pod("opted", "exec-1").unwrap()),
        ["main", "added"]
    );

    let reviews = hook.reviews.lock().unwrap().clone();
    assert_eq!(reviews.len(), 1);
    let (target, review) = &reviews[0];
    assert_eq!(target, "/mutate?timeout=5s");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let req = &review["request"];
    assert!(!req["uid"].as_str().unwrap().is_empty());
    assert_eq!(
        req["kind"],
        json!({ "group": "", "version": "v1", "kind": "Pod" })
    );
    assert_eq!(
        req["resource"],
        json!({ "group": "", "version": "v1", "resource": "pods" })
    );
    assert_eq!(req["namespace"], "opted");
    assert_eq!(req["name"], "exec-1");
    assert_eq!(req["operation"], "CREATE");
    assert_eq!(req["dryRun"], false);
    assert_eq!(req["userInfo"]["username"], "system:anonymous");
    assert_eq!(
        req["object"]["metadata"]["labels"]["spark-role"],
        "executor"
    );
    assert_eq!(req["object"]["metadata"]["namespace"], "opted");

    // Not selected by the objectSelector: unchanged, not even called.
    let p = create(&opted, &pod("driver", &[("spark-role", "driver")]))
        .await
        .unwrap();
    assert_eq!(containers(&p), ["main"]);
    // A namespace without the label (or never created): unchanged.
    namespace(&client, "plain", &[]).await;
    for ns in ["plain", "never-created"] {
        let p = Api::<Pod>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &executor("exec-1"))
            .await
            .unwrap();
        assert_eq!(containers(&p), ["main"], "{ns}");
    }
    assert_eq!(hook.reviews.lock().unwrap().len(), 1);
    assert_eq!(server.webhook_calls(), 1);

    // Deleted: no longer called.
    delete_config(&configs, "test").await;
    let p = create(&opted, &executor("exec-2")).await.unwrap();
    assert_eq!(containers(&p), ["main"]);
    assert_eq!(api_error(configs.get("test").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn a_service_reference_is_called_at_its_mapped_address_under_its_dns_name() {
    let pki = pki(&["hook.webhooks.svc"]);
    let hook = start_hook(&pki, Mode::Patch).await;
    let Cluster {
        server,
        configs,
        opted,
        ..
    } = Cluster::with(FakeApiServer::builder().webhook_service("webhooks", "hook", hook.addr))
        .await;
    let cc = json!({ "service": { "namespace": "webhooks", "name": "hook", "path": "/inject", "port": 443 },
                     "caBundle": BASE64_STANDARD.encode(pki.ca_pem.as_bytes()) });
    create(&configs, &config("svc", cc, "Fail", 10))
        .await
        .unwrap();
    let p = create(&opted, &executor("e")).await.unwrap();
    assert_eq!(containers(&p), ["main", "added"]);
    assert_eq!(hook.reviews.lock().unwrap()[0].0, "/inject?timeout=10s");

    // Another Service name has no address: the call fails, and the policy (Fail) rejects.
    server.set_service_address("webhooks", "hook", "127.0.0.1:9".parse().unwrap());
    let err = refused(&opted, "f").await;
    assert_internal_error(&err);
    assert!(err.message.starts_with(
        "Internal error occurred: failed calling webhook \"pods.test.kshuffle.io\": failed to call webhook: Post \"https://hook.webhooks.svc:443/inject?timeout=10s\":"),
        "{}", err.message);
    assert!(server.pod("opted", "f").is_none());
}

#[tokio::test]
async fn failure_policy_fail_rejects_and_ignore_admits_unchanged() {
    let pki = pki(&["localhost"]);
    // A port with nobody listening: bound, then closed.
    let down = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let Cluster {
        server,
        configs,
        opted,
        ..
    } = Cluster::start().await;
    add_url_config(&configs, "c", &pki, down, "Fail", 5).await;
    let err = refused(&opted, "e").await;
    assert_internal_error(&err);
    assert_message_has(&err, "failed calling webhook \"pods.test.kshuffle.io\"");
    assert_message_has(&err, "connect");
    assert!(server.pod("opted", "e").is_none());

    delete_config(&configs, "c").await;
    add_url_config(&configs, "c", &pki, down, "Ignore", 5).await;
    let p = create(&opted, &executor("e")).await.unwrap();
    assert_eq!(containers(&p), ["main"]);
    assert_eq!(server.webhook_calls(), 2);
}

#[tokio::test]
async fn a_certificate_not_from_the_ca_bundle_or_a_slow_webhook_is_a_failed_call() {
    let pki_good = pki(&["localhost"]);
    let other = pki(&["localhost"]);
    let hook = start_hook(&pki_good, Mode::Slow).await;
    let Cluster {
        server: _server,
        configs,
        opted,
        ..
    } = Cluster::start().await;

    // caBundle of another CA: TLS verification fails, nothing reaches the webhook.
    add_url_config(&configs, "c", &other, hook.addr, "Fail", 5).await;
    let err = refused(&opted, "e").await;
    assert_eq!(err.code, 500);
    assert_message_has(&err, "certificate");
    assert!(hook.reviews.lock().unwrap().is_empty());

    // The right CA, but the webhook answers after 5 s and timeoutSeconds is 1.
    delete_config(&configs, "c").await;
    add_url_config(&configs, "c", &pki_good, hook.addr, "Fail", 1).await;
    let err = refused(&opted, "e").await;
    assert_eq!(err.code, 500);
    assert!(
        err.message.ends_with("context deadline exceeded"),
        "{}",
        err.message
    );
    assert_eq!(hook.reviews.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn denials_and_bad_patches_reject_the_create_whatever_the_policy() {
    let (hook, Cluster { server, opted, .. }) = hooked(Mode::Deny, "Ignore").await;
    let err = refused(&opted, "e").await;
    assert_eq!(err.code, 403);
    assert_eq!(
        err.message,
        "admission webhook \"pods.test.kshuffle.io\" denied the request: no executors today"
    );

    *hook.mode.lock().unwrap() = Mode::BadPatch;
    let err = refused(&opted, "e").await;
    assert_internal_error(&err);
    assert!(server.pod("opted", "e").is_none());
}

#[tokio::test]
async fn invalid_configurations_are_refused_with_the_causes() {
    let server = FakeApiServer::start().await.unwrap();
    let client = kshuffle_testkit::kube_client(&server, "default").unwrap();
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let mut bad = config(
        "bad",
        json!({ "url": "http://127.0.0.1:1/x" }),
        "Sometimes",
        60,
    );
    let wh = &mut bad.webhooks.as_mut().unwrap()[0];
    wh.side_effects = "Some".into();
    wh.name = "short".into();
    let err = api_error(create(&configs, &bad).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    for field in [
        "webhooks[0].name",
        "webhooks[0].sideEffects",
        "webhooks[0].clientConfig.url",
        "webhooks[0].failurePolicy",
        "webhooks[0].timeoutSeconds",
    ] {
        assert!(
            err.message.contains(field),
            "{field} missing from {}",
            err.message
        );
    }
    assert!(list_configs(&configs).await.is_empty());
}

#[tokio::test]
async fn if_needed_webhooks_are_called_again_only_after_a_later_change() {
    let pki = pki(&["localhost"]);
    let first = start_hook(&pki, Mode::Patch).await;
    let second = start_hook(&pki, Mode::Allow).await;
    let Cluster {
        server: _server,
        configs,
        opted,
        ..
    } = Cluster::start().await;
    let mut a = config("a", url_config(&pki, first.addr), "Fail", 5);
    a.webhooks.as_mut().unwrap()[0].reinvocation_policy = Some("IfNeeded".into());
    create(&configs, &a).await.unwrap();
    add_url_config(&configs, "b", &pki, second.addr, "Fail", 5).await;

    // The second webhook changes nothing: the first is called once.
    create(&opted, &executor("e1")).await.unwrap();
    assert_eq!(first.reviews.lock().unwrap().len(), 1);
    assert_eq!(second.reviews.lock().unwrap().len(), 1);

    // The second webhook patches too: the first is called once more, and sees its patch.
    *second.mode.lock().unwrap() = Mode::Patch;
    let p = create(&opted, &executor("e2")).await.unwrap();
    let reviews = first.reviews.lock().unwrap().clone();
    assert_eq!(reviews.len(), 3);
    assert_eq!(second.reviews.lock().unwrap().len(), 2);
    let seen = reviews[2].1["request"]["object"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        seen, 3,
        "the reinvocation gets the object with both patches"
    );
    assert_eq!(containers(&p), ["main", "added", "added", "added"]);
}

#[tokio::test]
async fn daemonset_pods_go_through_the_webhooks_as_the_controller() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let (hook, Cluster { server, client, .. }) = hooked(Mode::Patch, "Fail").await;
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": { "name": "daemon" },
        "spec": {
            "selector": { "matchLabels": { "spark-role": "executor" } },
            "template": {
                "metadata": { "labels": { "spark-role": "executor" } },
                "spec": { "containers": [{ "name": "main", "image": "d:1" }] },
            },
        },
    }))
    .unwrap();
    Api::<DaemonSet>::namespaced(client.clone(), "opted")
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    let mut pods = Vec::new();
    for _ in 0..500 {
        pods = server.pods("opted");
        if !pods.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pods.len(), 1);
    assert_eq!(containers(&pods[0]), ["main", "added"]);
    let reviews = hook.reviews.lock().unwrap().clone();
    let req = &reviews[0].1["request"];
    assert_eq!(
        req["userInfo"]["username"],
        "system:serviceaccount:kube-system:daemon-set-controller"
    );
    // generateName: the webhook sees no name yet, as on a real server.
    assert!(req.get("name").is_none(), "{req}");
    assert_eq!(req["object"]["metadata"]["generateName"], "daemon-");
}
