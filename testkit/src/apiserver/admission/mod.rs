//! Mutating admission on pod create, as the real API server's `MutatingAdmissionWebhook`
//! plugin does it, plus the two kinds it reads:
//!
//! | route | verbs |
//! |---|---|
//! | `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations` | GET (list), POST |
//! | `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}` | GET, DELETE |
//! | `/api/v1/namespaces` | GET (list), POST |
//! | `/api/v1/namespaces/{name}` | GET, DELETE |
//!
//! On every pod CREATE through the API (and every pod the DaemonSet controller creates), the
//! webhooks of every configuration (configurations by name, webhooks in their order) are
//! considered; one is called when its `rules` match (operation CREATE, group `""`, version
//! `v1`, resource `pods`, scope Namespaced or `*`), its `namespaceSelector` matches the labels
//! of the pod's namespace and its `objectSelector` the pod's labels as they are at that point.
//! The call is in `call.rs`. Its answer: `allowed: false` rejects the create with the
//! webhook's `status` (`admission webhook "<name>" denied the request: …`, code ≥ 400); a
//! JSONPatch is applied to the pod (a patch that does not decode or apply, or yields
//! something that is not a Pod, is a 500 whatever the failure policy, as on a real server); a
//! webhook that cannot be called or answers something invalid is skipped under
//! `failurePolicy: Ignore` and rejects the create under `Fail` (the default) with the real
//! server's 500 `Internal error occurred: failed calling webhook "<name>": …`.
//!
//! Namespaces: the fake keeps serving pods in any namespace whether or not it was created. A
//! created Namespace supplies its labels (plus `kubernetes.io/metadata.name`, which the real
//! server sets on every namespace); a namespace never created has only that label.
//!
//! Services: a webhook's `clientConfig.service` is called at
//! `https://<name>.<namespace>.svc:<port><path>` (the TLS name checked against the
//! certificate), connecting to the address a test mapped the Service to
//! ([`crate::apiserver::Builder::webhook_service`], [`crate::FakeApiServer::set_service_address`]);
//! an unmapped Service fails the call (`service "<name>" not found`), subject to the policy.
//!
//! `reinvocationPolicy: IfNeeded`: after every webhook was considered once, each IfNeeded
//! webhook that was called before a later webhook changed the pod is called once more, in
//! order (the real server also re-runs its built-in plugins then; the fake has none).
//!
//! Left out (listed in `testkit/README.md`): `matchConditions` (CEL) are refused at create; `matchPolicy` is moot (pods have
//! one version); operations other than pod CREATE are not sent to webhooks; validating
//! webhooks; `caBundle`-less webhooks get no system trust store (the call fails TLS);
//! Namespace deletion is immediate (no Terminating phase).

mod call;
mod config;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::prelude::{BASE64_STANDARD, Engine as _};
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::core::v1::{Namespace, NamespaceStatus, Pod};
use serde_json::{Value, json};

use super::selector::LabelSelector;
use super::status::Error;
use super::typed::{self, Kept, KindError};
use super::{Shared, Verb};

/// The label the real server puts on every namespace.
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Who a request is from, as `userInfo` in the review.
#[derive(Debug, Clone, Copy)]
pub enum User {
    /// A request through the HTTP API (the fake has no authentication).
    Anonymous,
    /// The DaemonSet controller.
    DaemonSetController,
}

impl User {
    fn info(self) -> Value {
        match self {
            Self::Anonymous => json!({
                "username": "system:anonymous", "groups": ["system:unauthenticated"],
            }),
            Self::DaemonSetController => json!({
                "username": "system:serviceaccount:kube-system:daemon-set-controller",
                "uid": "00000000-0000-4000-a000-000000000001",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
            }),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    configs: Kept<MutatingWebhookConfiguration>,
    namespaces: Kept<Namespace>,
    services: HashMap<(String, String), SocketAddr>,
}

/// The admission state: webhook configurations, namespaces, Service addresses.
#[derive(Debug, Default)]
pub struct Admission {
    inner: Mutex<Inner>,
    calls: std::sync::atomic::AtomicU64,
}

impl Admission {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Maps a Service to the address its webhook calls connect to.
    pub fn set_service_address(&self, namespace: &str, name: &str, addr: SocketAddr) {
        self.lock()
            .services
            .insert((namespace.to_owned(), name.to_owned()), addr);
    }

    /// How many webhook calls were made (answered or not).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The labels of a namespace as selectors see them.
    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .lock()
            .namespaces
            .items
            .get(&(String::new(), ns.to_owned()))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        labels.insert(NAME_LABEL.to_owned(), ns.to_owned());
        labels
    }
}

/// Admits a pod (calls the matching webhooks, applies their patches), then creates it.
///
/// # Errors
/// A rejection by a webhook or the failure policy, or whatever the store's create returns.
pub async fn create_pod(s: &Shared, ns: &str, pod: Pod, user: User) -> Result<Pod, Error> {
    let pod = admit(s, ns, pod, user).await?;
    s.store.create(ns, pod)
}

fn rule_matches(hook: &MutatingWebhook) -> bool {
    let has = |list: &Option<Vec<String>>, want: &str| {
        list.iter().flatten().any(|v| v == want || v == "*")
    };
    hook.rules.iter().flatten().any(|r| {
        has(&r.operations, "CREATE")
            && has(&r.api_groups, "")
            && has(&r.api_versions, "v1")
            && r.resources
                .iter()
                .flatten()
                .any(|v| v == "pods" || v == "*" || v == "*/*")
            && r.scope
                .as_deref()
                .is_none_or(|s| s == "*" || s == "Namespaced")
    })
}

async fn admit(s: &Shared, ns: &str, mut pod: Pod, user: User) -> Result<Pod, Error> {
    let hooks: Vec<MutatingWebhook> = s
        .admission
        .lock()
        .configs
        .items
        .values()
        .flat_map(|c| c.webhooks.clone().unwrap_or_default())
        .collect();
    if hooks.is_empty() {
        return Ok(pod);
    }
    pod.metadata.namespace = Some(ns.to_owned());
    let ns_labels = s.admission.namespace_labels(ns);
    // Changes so far, and the count right after each IfNeeded webhook's call.
    let mut changes = 0u64;
    let mut if_needed: Vec<(usize, u64)> = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        let Some(changed) = invoke(s, hook, ns, &ns_labels, &mut pod, user).await? else {
            continue;
        };
        changes += u64::from(changed);
        if hook.reinvocation_policy.as_deref() == Some("IfNeeded") {
            if_needed.push((i, changes));
        }
    }
    // Reinvocation, as the real server does it: once, for each IfNeeded webhook called
    // before a later change by another webhook.
    for (i, after) in if_needed {
        if after < changes
            && let Some(hook) = hooks.get(i)
        {
            invoke(s, hook, ns, &ns_labels, &mut pod, user).await?;
        }
    }
    Ok(pod)
}

/// Calls one webhook if it matches, applying its patch to `pod`: `None` if it was not called,
/// else whether the pod changed.
async fn invoke(
    s: &Shared,
    hook: &MutatingWebhook,
    ns: &str,
    ns_labels: &BTreeMap<String, String>,
    pod: &mut Pod,
    user: User,
) -> Result<Option<bool>, Error> {
    let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
    if !rule_matches(hook)
        || !typed::selector_matches(hook.namespace_selector.as_ref(), ns_labels)
        || !typed::selector_matches(hook.object_selector.as_ref(), &pod_labels)
    {
        return Ok(None);
    }
    let ignore = hook.failure_policy.as_deref() == Some("Ignore");
    match call_one(s, hook, ns, pod, user).await {
        Ok(Outcome::Patched(p)) => {
            let changed = *p != *pod;
            *pod = *p;
            Ok(Some(changed))
        }
        Ok(Outcome::Unchanged) => Ok(Some(false)),
        Err(HookError::Calling(why)) if ignore => {
            tracing::warn!(webhook = %hook.name, %why, "failed calling webhook, failing open");
            Ok(Some(false))
        }
        Err(HookError::Calling(why)) => {
            tracing::warn!(webhook = %hook.name, %why, "failed calling webhook, failing closed");
            Err(Error::WebhookFailed {
                message: format!("failed calling webhook \"{}\": {why}", hook.name),
            })
        }
        Err(HookError::Rejected(e)) => Err(e),
    }
}

enum Outcome {
    Unchanged,
    Patched(Box<Pod>),
}

enum HookError {
    /// Subject to the failure policy.
    Calling(String),
    /// Final: a denial or a bad patch.
    Rejected(Error),
}

fn target(s: &Shared, hook: &MutatingWebhook, timeout_secs: i32) -> Result<call::Target, String> {
    let cc = &hook.client_config;
    let query = format!("timeout={timeout_secs}s");
    if let Some(svc) = &cc.service {
        let port = svc.port.unwrap_or(443);
        let host = format!("{}.{}.svc", svc.name, svc.namespace);
        let path = svc.path.clone().unwrap_or_else(|| "/".into());
        let path_and_query = format!("{path}?{query}");
        let addr = s
            .admission
            .lock()
            .services
            .get(&(svc.namespace.clone(), svc.name.clone()))
            .copied()
            .ok_or_else(|| format!("service \"{}\" not found", svc.name));
        return Ok(call::Target {
            url: format!("https://{host}:{port}{path_and_query}"),
            host,
            path_and_query,
            addr,
        });
    }
    let url = cc.url.as_deref().unwrap_or("");
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| format!("invalid url {url:?}: {e}"))?;
    let host = uri.host().unwrap_or("").trim_matches(['[', ']']).to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let path_and_query = format!("{}?{query}", uri.path());
    let addr = format!("{host}:{port}")
        .parse::<SocketAddr>()
        .or_else(|_| match host.as_str() {
            "localhost" => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
            _ => Err(format!("dial tcp: lookup {host}: no such host (the fake resolves only IP addresses and localhost)")),
        });
    Ok(call::Target {
        url: format!(
            "https://{}:{port}{path_and_query}",
            uri.host().unwrap_or("")
        ),
        host,
        path_and_query,
        addr,
    })
}

async fn call_one(
    s: &Shared,
    hook: &MutatingWebhook,
    ns: &str,
    pod: &Pod,
    user: User,
) -> Result<Outcome, HookError> {
    // Unique per call: the count of calls before this one.
    let seq = s
        .admission
        .calls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let timeout_secs = hook.timeout_seconds.unwrap_or(10).clamp(1, 30);
    let target = target(s, hook, timeout_secs).map_err(HookError::Calling)?;
    let uid = format!("00000000-0000-4000-b000-{seq:012x}");
    let object = serde_json::to_value(pod).map_err(|e| HookError::Calling(e.to_string()))?;
    let gvk = json!({ "group": "", "version": "v1", "kind": "Pod" });
    let gvr = json!({ "group": "", "version": "v1", "resource": "pods" });
    let mut request = json!({
        "uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "namespace": ns, "operation": "CREATE", "userInfo": user.info(), "object": object,
        "oldObject": null, "dryRun": false,
        "options": { "apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions" },
    });
    if let (Some(name), Some(obj)) = (
        pod.metadata.name.as_deref().filter(|n| !n.is_empty()),
        request.as_object_mut(),
    ) {
        obj.insert("name".into(), Value::String(name.to_owned()));
    }
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request,
    });
    let ca = hook
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let response = call::call(
        &target,
        &ca,
        &review,
        &uid,
        Duration::from_secs(timeout_secs.unsigned_abs().into()),
    )
    .await
    .map_err(|call::CallError::Calling(e)| HookError::Calling(e))?;
    if response.get("allowed").and_then(Value::as_bool) != Some(true) {
        return Err(HookError::Rejected(denied(
            &hook.name,
            response.get("status"),
        )));
    }
    let patch = response.get("patch").and_then(Value::as_str).unwrap_or("");
    if patch.is_empty() {
        return Ok(Outcome::Unchanged);
    }
    let bytes = BASE64_STANDARD.decode(patch).map_err(|_| {
        HookError::Calling(
            "failed to call webhook: unable to decode the response: response.patch is not base64"
                .into(),
        )
    })?;
    let internal = |e: String| HookError::Rejected(Error::WebhookFailed { message: e });
    let ops: json_patch::Patch =
        serde_json::from_slice(&bytes).map_err(|e| internal(e.to_string()))?;
    let mut doc = serde_json::to_value(pod).map_err(|e| internal(e.to_string()))?;
    json_patch::patch(&mut doc, &ops.0).map_err(|e| internal(e.to_string()))?;
    let patched: Pod = serde_json::from_value(doc)
        .map_err(|e| internal(format!("the patched object is not a Pod: {e}")))?;
    Ok(Outcome::Patched(Box::new(patched)))
}

/// The rejection the real server builds from a webhook's `allowed: false` (`ToStatusErr`).
fn denied(hook: &str, status: Option<&Value>) -> Error {
    let by = format!("admission webhook \"{hook}\" denied the request");
    let text = |k: &str| {
        status
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (message, reason) = (text("message"), text("reason"));
    let code = status
        .and_then(|s| s.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(400);
    let message = match (message.is_empty(), reason.is_empty()) {
        (false, _) => format!("{by}: {message}"),
        (true, false) => format!("{by}: {reason}"),
        (true, true) => format!("{by} without explanation"),
    };
    Error::WebhookDenied {
        code,
        reason,
        message,
    }
}

// === routes ===

type Shr = State<Arc<Shared>>;
type Params = Result<Query<HashMap<String, String>>, QueryRejection>;
const MWC: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";

/// The routes of this module.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(MWC, get(list_configs).post(create_config))
        .route(
            "/apis/admissionregistration.k8s.io/v1",
            get(|| async { typed::resource_list::<MutatingWebhookConfiguration>(&[], false) }),
        )
        .route(
            &format!("{MWC}/{{name}}"),
            get(get_config).delete(delete_config),
        )
        .route(
            "/api/v1/namespaces",
            get(list_namespaces).post(create_namespace),
        )
        .route(
            "/api/v1/namespaces/{name}",
            get(get_namespace).delete(delete_namespace),
        )
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed.into_response() })
        .with_state(shared)
}

fn answer(r: Result<Response, KindError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn list_configs(State(s): Shr, q: Params) -> Response {
    answer(
        async {
            s.admit(Verb::List).await?;
            let p = typed::params(q)?;
            typed::reject_unsupported::<MutatingWebhookConfiguration>(&p)?;
            let sel = LabelSelector::parse(p.get("labelSelector").map_or("", String::as_str))?;
            let items = s.admission.lock().configs.list(None, &sel);
            Ok(typed::list_body(s.store.lock().rv(), &items))
        }
        .await,
    )
}

async fn create_config(State(s): Shr, q: Params, body: Bytes) -> Response {
    answer(
        async {
            s.admit(Verb::Create).await?;
            typed::reject_unsupported::<MutatingWebhookConfiguration>(&typed::params(q)?)?;
            let mut obj: MutatingWebhookConfiguration = typed::parse(&body)?;
            config::validate_and_default(&mut obj)?;
            let created = {
                let mut state = s.store.lock();
                s.admission.lock().configs.create(&mut state, "", obj)?
            };
            Ok((StatusCode::CREATED, axum::Json(created)).into_response())
        }
        .await,
    )
}

async fn get_config(State(s): Shr, Path(name): Path<String>) -> Response {
    answer(
        async {
            s.admit(Verb::Get).await?;
            let obj = s.admission.lock().configs.get("", &name)?;
            Ok(axum::Json(obj).into_response())
        }
        .await,
    )
}

async fn delete_config(State(s): Shr, Path(name): Path<String>) -> Response {
    answer(
        async {
            s.admit(Verb::Delete).await?;
            let mut state = s.store.lock();
            let obj = s.admission.lock().configs.remove(&mut state, "", &name)?;
            Ok(axum::Json(obj).into_response())
        }
        .await,
    )
}

async fn list_namespaces(State(s): Shr, q: Params) -> Response {
    answer(
        async {
            s.admit(Verb::List).await?;
            let p = typed::params(q)?;
            typed::reject_unsupported::<Namespace>(&p)?;
            let sel = LabelSelector::parse(p.get("labelSelector").map_or("", String::as_str))?;
            let items = s.admission.lock().namespaces.list(None, &sel);
            Ok(typed::list_body(s.store.lock().rv(), &items))
        }
        .await,
    )
}

async fn create_namespace(State(s): Shr, q: Params, body: Bytes) -> Response {
    answer(async {
        s.admit(Verb::Create).await?;
        typed::reject_unsupported::<Namespace>(&typed::params(q)?)?;
        let mut obj: Namespace = typed::parse(&body)?;
        let name = obj.metadata.name.clone().unwrap_or_default();
        if !name.is_empty() && !config::is_dns1123_label(&name) {
            return Err(KindError::Invalid(
                "Namespace",
                name.clone(),
                vec![(
                    "metadata.name".into(),
                    format!("Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"),
                )],
            ));
        }
        obj.status = Some(NamespaceStatus {
            phase: Some("Active".into()),
            ..NamespaceStatus::default()
        });
        let created = {
            let mut state = s.store.lock();
            let mut ad = s.admission.lock();
            let mut created = ad.namespaces.create(&mut state, "", obj)?;
            let final_name = created.metadata.name.clone().unwrap_or_default();
            created
                .metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(NAME_LABEL.to_owned(), final_name.clone());
            ad.namespaces
                .items
                .insert((String::new(), final_name), created.clone());
            created
        };
        Ok((StatusCode::CREATED, axum::Json(created)).into_response())
    }.await)
}

async fn get_namespace(State(s): Shr, Path(name): Path<String>) -> Response {
    answer(
        async {
            s.admit(Verb::Get).await?;
            let obj = s.admission.lock().namespaces.get("", &name)?;
            Ok(axum::Json(obj).into_response())
        }
        .await,
    )
}

async fn delete_namespace(State(s): Shr, Path(name): Path<String>) -> Response {
    answer(
        async {
            s.admit(Verb::Delete).await?;
            let mut state = s.store.lock();
            let obj = s
                .admission
                .lock()
                .namespaces
                .remove(&mut state, "", &name)?;
            Ok(axum::Json(obj).into_response())
        }
        .await,
    )
}
