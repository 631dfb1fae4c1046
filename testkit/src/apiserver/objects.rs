//! core/v1 resources other than pods, kept as JSON documents: ConfigMaps, Secrets, Services
//! and PersistentVolumeClaims — what Spark's Kubernetes client creates, lists and deletes
//! around its executor pods — and `networking.k8s.io/v1` NetworkPolicies (Spark 4's cluster
//! mode applies one per application; stored and served, never enforced, with the same verbs
//! under `/apis/networking.k8s.io/v1/...`, and also answered under `/api/v1/...`, where a
//! real server has none).
//!
//! | route | verbs |
//! |---|---|
//! | `/api/v1/namespaces/{ns}/{resource}` | GET (list), POST, DELETE (collection) |
//! | `/api/v1/namespaces/{ns}/{resource}/{name}` | GET, DELETE, PATCH (server-side apply) |
//! | `/api/v1/{resource}` | GET (list across namespaces) |
//!
//! `{resource}` is `configmaps`, `secrets`, `services` or `persistentvolumeclaims`; any other
//! is a 404 as on a real server. Validation is the part of the real server's that a client
//! is likely to trip over (names, ConfigMap and Secret keys and sizes, Secret base64 data and
//! `stringData`, Service ports, PVC access modes and storage request), answered 422 Invalid
//! with the real wording; defaults the server fills in are filled in (Secret `type`, Service
//! `type`, `clusterIP`, port `protocol` and `targetPort`, PVC `status.phase`).
//!
//! Server-side apply (`PATCH` as `application/apply-patch+yaml` with a `fieldManager`, as
//! Spark 4's cluster-mode client sends its driver Service and ConfigMaps) is simplified: there
//! are no managed fields, so the applied object replaces the stored one (keeping its `uid`,
//! `creationTimestamp` and a Service's cluster IP) or is created; `force` changes nothing,
//! as no conflict is ever found.
//!
//! Not implemented (answered 405, or 415 for another PATCH type, or 400 for `watch=true`, and
//! listed in `testkit/README.md`): PUT, other PATCH types, watches of these resources, finalizers (a PVC is deleted at once, without
//! `kubernetes.io/pvc-protection`), `dryRun`.
//!
//! Discovery is served here too (`/api`, `/api/v1`, `/apis`), listing exactly the resources
//! and verbs the fake implements, so `kubectl` can talk to it.
//!
//! Invariants: objects live in the pod store's state under its lock, and every change takes
//! the next value of the one `resourceVersion` counter, as etcd's revision is shared by all
//! kinds; a change here emits no pod watch event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::prelude::{BASE64_STANDARD, Engine as _};
use serde_json::{Map, Value, json};

use super::selector::LabelSelector;
use super::status::Error;
use super::store::{State as StoreState, now_time};
use super::{Shared, Verb};

type Shr = State<Arc<Shared>>;
type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// The largest ConfigMap or Secret, as the real server limits them (1 MiB of data).
const MAX_DATA_BYTES: usize = 1 << 20;

/// A resource served here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// `configmaps`.
    ConfigMaps,
    /// `secrets`.
    Secrets,
    /// `services`.
    Services,
    /// `persistentvolumeclaims`.
    PersistentVolumeClaims,
    /// `networkpolicies` (`networking.k8s.io/v1`).
    NetworkPolicies,
}

impl Resource {
    /// The resource for a URL path segment.
    pub fn from_plural(s: &str) -> Option<Self> {
        Some(match s {
            "configmaps" => Self::ConfigMaps,
            "secrets" => Self::Secrets,
            "services" => Self::Services,
            "persistentvolumeclaims" => Self::PersistentVolumeClaims,
            "networkpolicies" => Self::NetworkPolicies,
            _ => return None,
        })
    }

    /// The URL path segment.
    pub fn plural(self) -> &'static str {
        match self {
            Self::ConfigMaps => "configmaps",
            Self::Secrets => "secrets",
            Self::Services => "services",
            Self::PersistentVolumeClaims => "persistentvolumeclaims",
            Self::NetworkPolicies => "networkpolicies",
        }
    }

    /// The `apiVersion` of its objects.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::NetworkPolicies => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    /// The `kind` of one object.
    pub fn kind(self) -> &'static str {
        match self {
            Self::ConfigMaps => "ConfigMap",
            Self::Secrets => "Secret",
            Self::Services => "Service",
            Self::PersistentVolumeClaims => "PersistentVolumeClaim",
            Self::NetworkPolicies => "NetworkPolicy",
        }
    }
}

/// (resource, namespace, name).
pub type ObjKey = (Resource, String, String);

/// The stored objects.
pub type Objects = BTreeMap<ObjKey, Value>;

/// An error about an object here, rendered as the real server's `Status`.
#[derive(Debug)]
enum ObjError {
    /// A resource this server does not serve.
    UnknownResource,
    NotFound(Resource, String),
    AlreadyExists(Resource, String),
    /// 422, with `field: message` causes.
    Invalid(Resource, String, Vec<(String, String)>),
    Api(Error),
}

impl From<Error> for ObjError {
    fn from(e: Error) -> Self {
        Self::Api(e)
    }
}

impl IntoResponse for ObjError {
    fn into_response(self) -> Response {
        let (code, reason, message, details) = match self {
            Self::Api(e) => return e.into_response(),
            Self::UnknownResource => (
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource".to_owned(),
                json!({}),
            ),
            Self::NotFound(r, name) => (
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", r.plural()),
                json!({ "name": name, "kind": r.plural() }),
            ),
            Self::AlreadyExists(r, name) => (
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", r.plural()),
                json!({ "name": name, "kind": r.plural() }),
            ),
            Self::Invalid(r, name, causes) => {
                let text: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
                let message = match text.as_slice() {
                    [one] => format!("{} \"{name}\" is invalid: {one}", r.kind()),
                    many => format!("{} \"{name}\" is invalid: [{}]", r.kind(), many.join(", ")),
                };
                let causes: Vec<Value> = causes
                    .iter()
                    .map(
                        |(f, m)| json!({ "reason": "FieldValueInvalid", "message": m, "field": f }),
                    )
                    .collect();
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    message,
                    json!({ "name": name, "kind": r.kind(), "causes": causes }),
                )
            }
        };
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": code.as_u16(),
        });
        (code, axum::Json(status)).into_response()
    }
}

/// The routes of this module.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/api/v1/namespaces/{ns}/{resource}",
            get(list).post(create).delete(delete_collection),
        )
        .route(
            "/api/v1/namespaces/{ns}/{resource}/{name}",
            get(get_one).delete(delete_one).patch(apply),
        )
        .route("/api/v1/{resource}", get(list_all))
        // networking.k8s.io/v1: NetworkPolicies (stored, never enforced).
        .route(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/{resource}",
            get(list).post(create).delete(delete_collection),
        )
        .route(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/{resource}/{name}",
            get(get_one).delete(delete_one).patch(apply),
        )
        .route("/apis/networking.k8s.io/v1/{resource}", get(list_all))
        .route("/apis/networking.k8s.io/v1", get(networking_resources))
        .route("/api", get(api_versions))
        .route("/api/v1", get(api_resources))
        .route("/apis", get(api_groups))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

async fn api_versions() -> Response {
    axum::Json(json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1" }],
    }))
    .into_response()
}

async fn api_groups() -> Response {
    // The groups of `daemonsets.rs` and `admission/`, which serve their own resource lists.
    let group = |name: &str| {
        let gv = json!({ "groupVersion": format!("{name}/v1"), "version": "v1" });
        json!({ "name": name, "versions": [gv.clone()], "preferredVersion": gv })
    };
    let groups = [
        group("apps"),
        group("admissionregistration.k8s.io"),
        group("networking.k8s.io"),
    ];
    axum::Json(json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }))
        .into_response()
}

/// networking.k8s.io/v1 as served: NetworkPolicies.
async fn networking_resources() -> Response {
    let r = Resource::NetworkPolicies;
    axum::Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": r.api_version(),
        "resources": [{
            "name": r.plural(), "singularName": "networkpolicy", "namespaced": true,
            "kind": r.kind(), "shortNames": ["netpol"],
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch"],
        }],
    }))
    .into_response()
}

/// core/v1 as served: pods (see `http.rs`) and the resources of this module.
async fn api_resources() -> Response {
    let resource = |name: &str, kind: &str, short: &[&str], verbs: &[&str]| {
        json!({
            "name": name, "singularName": kind.to_ascii_lowercase(), "namespaced": true,
            "kind": kind, "verbs": verbs, "shortNames": short,
        })
    };
    let objects = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
    ];
    let mut resources = vec![resource(
        "pods",
        "Pod",
        &["po"],
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ],
    )];
    for (r, short) in [
        (Resource::ConfigMaps, "cm"),
        (Resource::Secrets, ""),
        (Resource::Services, "svc"),
        (Resource::PersistentVolumeClaims, "pvc"),
    ] {
        let shorts: &[&str] = if short.is_empty() { &[] } else { &[short] };
        resources.push(resource(r.plural(), r.kind(), shorts, &objects));
    }
    // Served by `admission/` (cluster-scoped).
    let mut namespaces = resource(
        "namespaces",
        "Namespace",
        &["ns"],
        &["create", "delete", "get", "list"],
    );
    if let Some(obj) = namespaces.as_object_mut() {
        obj.insert("namespaced".into(), Value::Bool(false));
    }
    resources.push(namespaces);
    axum::Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
        "resources": resources,
    }))
    .into_response()
}

async fn method_not_allowed() -> Response {
    Error::MethodNotAllowed.into_response()
}

fn resource(plural: &str) -> Result<Resource, ObjError> {
    Resource::from_plural(plural).ok_or(ObjError::UnknownResource)
}

fn answer(r: Result<Response, ObjError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

fn params(q: Params) -> Result<HashMap<String, String>, Error> {
    q.map(|Query(m)| m)
        .map_err(|e| Error::BadRequest(format!("invalid query: {e}")))
}

fn reject_unsupported(r: Resource, p: &HashMap<String, String>) -> Result<(), Error> {
    if p.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(Error::BadRequest(
            "dryRun is not supported by the fake API server".into(),
        ));
    }
    if p.get("watch").is_some_and(|v| v == "true" || v == "1") {
        return Err(Error::BadRequest(format!(
            "watch of {} is not supported by the fake API server (only pods can be watched)",
            r.plural()
        )));
    }
    Ok(())
}

/// A parsed `labelSelector` plus `fieldSelector` (`metadata.name`, `metadata.namespace`).
struct Filter {
    labels: LabelSelector,
    fields: Vec<(bool, bool, String)>, // (is name, negate, value)
}

impl Filter {
    fn parse(p: &HashMap<String, String>) -> Result<Self, Error> {
        let labels = LabelSelector::parse(p.get("labelSelector").map_or("", String::as_str))?;
        let raw = p.get("fieldSelector").map_or("", String::as_str);
        let mut fields = Vec::new();
        for term in raw.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (f, negate, v) = if let Some((f, v)) = term.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, false, v)
            } else {
                return Err(Error::BadRequest(format!(
                    "invalid selector: '{raw}'; can't understand '{term}'"
                )));
            };
            let is_name = match f.trim() {
                "metadata.name" => true,
                "metadata.namespace" => false,
                other => {
                    return Err(Error::BadRequest(format!(
                        "field label not supported: {other}"
                    )));
                }
            };
            fields.push((is_name, negate, v.trim().to_owned()));
        }
        Ok(Self { labels, fields })
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = |f: &str| {
            obj.pointer(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        let labels: Option<BTreeMap<String, String>> = obj
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok());
        self.labels.matches(labels.as_ref())
            && self.fields.iter().all(|(is_name, negate, v)| {
                let actual = meta(if *is_name { "name" } else { "namespace" });
                (actual == v) != *negate
            })
    }
}

fn list_body(r: Resource, rv: u64, items: Vec<Value>) -> Response {
    axum::Json(json!({
        "kind": format!("{}List", r.kind()), "apiVersion": r.api_version(),
        "metadata": { "resourceVersion": rv.to_string() }, "items": items,
    }))
    .into_response()
}

async fn list(State(s): Shr, Path((ns, plural)): Path<(String, String)>, q: Params) -> Response {
    answer(list_in(s, Some(ns), &plural, q).await)
}

async fn list_all(State(s): Shr, Path(plural): Path<String>, q: Params) -> Response {
    answer(list_in(s, None, &plural, q).await)
}

async fn list_in(
    s: Arc<Shared>,
    ns: Option<String>,
    plural: &str,
    q: Params,
) -> Result<Response, ObjError> {
    let r = resource(plural)?;
    let p = params(q)?;
    let verb = if p.get("watch").is_some_and(|v| v == "true" || v == "1") {
        Verb::Watch
    } else {
        Verb::List
    };
    s.admit(verb).await?;
    reject_unsupported(r, &p)?;
    let filter = Filter::parse(&p)?;
    let state = s.store.lock();
    let items = state
        .objects
        .iter()
        .filter(|((kr, kns, _), obj)| {
            *kr == r && ns.as_ref().is_none_or(|n| n == kns) && filter.matches(obj)
        })
        .map(|(_, obj)| obj.clone())
        .collect();
    Ok(list_body(r, state.rv(), items))
}

async fn get_one(
    State(s): Shr,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Response {
    let run = async {
        let r = resource(&plural)?;
        s.admit(Verb::Get).await?;
        let state = s.store.lock();
        state
            .objects
            .get(&(r, ns, name.clone()))
            .map(|o| axum::Json(o.clone()).into_response())
            .ok_or(ObjError::NotFound(r, name))
    };
    answer(run.await)
}

async fn create(
    State(s): Shr,
    Path((ns, plural)): Path<(String, String)>,
    headers: HeaderMap,
    q: Params,
    body: Bytes,
) -> Response {
    let run = async {
        let r = resource(&plural)?;
        s.admit(Verb::Create).await?;
        // JSON only: protobuf (kubectl's default for built-in kinds) and YAML are refused as
        // the real server refuses a media type it does not know.
        let ctype = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        if !ctype.starts_with("application/json") {
            return Err(Error::UnsupportedMediaType("application/json").into());
        }
        reject_unsupported(r, &params(q)?)?;
        let obj = parse(r, &body)?;
        let created = insert(&mut s.store.lock(), &ns, r, obj)?;
        Ok((StatusCode::CREATED, axum::Json(created)).into_response())
    };
    answer(run.await)
}

/// Server-side apply, simplified (module docs): creates the object (201) or replaces it with
/// the applied one (200), validated as a create is.
async fn apply(
    State(s): Shr,
    Path((ns, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    q: Params,
    body: Bytes,
) -> Response {
    let run = async {
        let r = resource(&plural)?;
        s.admit(Verb::Patch).await?;
        let ctype = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ctype.starts_with("application/apply-patch+yaml") {
            return Err(Error::UnsupportedMediaType("application/apply-patch+yaml").into());
        }
        let p = params(q)?;
        reject_unsupported(r, &p)?;
        if p.get("fieldManager").is_none_or(|m| m.is_empty()) {
            return Err(
                Error::BadRequest("PATCH with apply requires a fieldManager".into()).into(),
            );
        }
        // YAML, of which JSON is a part.
        let json = match serde_json::from_slice::<Value>(&body) {
            Ok(v) => v,
            Err(_) => {
                let text = std::str::from_utf8(&body)
                    .map_err(|e| Error::BadRequest(format!("error decoding YAML: {e}")))?;
                serde_saphyr::from_str::<Value>(text)
                    .map_err(|e| Error::BadRequest(format!("error decoding YAML: {e}")))?
            }
        };
        let bytes = serde_json::to_vec(&json).map_err(|_| Error::Internal)?;
        let mut obj = parse(r, &bytes)?;
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(meta) = meta else {
            return Err(Error::BadRequest("metadata: expected an object".into()).into());
        };
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(Error::BadRequest(
                    "the name of the object does not match the name on the URL".into(),
                )
                .into());
            }
            _ => {
                meta.insert("name".into(), Value::String(name.clone()));
            }
        }
        let mut state = s.store.lock();
        let key = (r, ns.clone(), name);
        let old = state.objects.remove(&key);
        if let Some(old) = &old
            && r == Resource::Services
            && let Some(Value::Object(spec)) = obj.get_mut("spec")
        {
            // The cluster IP is immutable; an applied object that omits it keeps it.
            for field in ["clusterIP", "clusterIPs"] {
                if let Some(v) = old.pointer(&format!("/spec/{field}"))
                    && spec.get(field).is_none_or(Value::is_null)
                {
                    spec.insert(field.into(), v.clone());
                }
            }
        }
        match (insert(&mut state, &ns, r, obj), old) {
            (Ok(created), None) => Ok((StatusCode::CREATED, axum::Json(created)).into_response()),
            (Ok(mut applied), Some(old)) => {
                if let Some(Value::Object(meta)) = applied.get_mut("metadata") {
                    for kept in ["uid", "creationTimestamp"] {
                        if let Some(v) = old.pointer(&format!("/metadata/{kept}")) {
                            meta.insert(kept.into(), v.clone());
                        }
                    }
                }
                state.objects.insert(key, applied.clone());
                Ok(axum::Json(applied).into_response())
            }
            (Err(e), old) => {
                if let Some(old) = old {
                    state.objects.insert(key, old);
                }
                Err(e)
            }
        }
    };
    answer(run.await)
}

/// Checks `DeleteOptions` in the body: JSON, no `dryRun`, a known `propagationPolicy`.
fn check_delete_options(body: &[u8]) -> Result<(), Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("invalid DeleteOptions: {e}")))?;
    if v.get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(Error::BadRequest(
            "dryRun is not supported by the fake API server".into(),
        ));
    }
    match v.get("propagationPolicy") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(p)) if ["Orphan", "Background", "Foreground"].contains(&p.as_str()) => {
            Ok(())
        }
        Some(other) => Err(Error::BadRequest(format!(
            "invalid DeleteOptions: propagationPolicy {other} is not one of Orphan, Background, Foreground"
        ))),
    }
}

async fn delete_one(
    State(s): Shr,
    Path((ns, plural, name)): Path<(String, String, String)>,
    q: Params,
    body: Bytes,
) -> Response {
    let run = async {
        let r = resource(&plural)?;
        s.admit(Verb::Delete).await?;
        reject_unsupported(r, &params(q)?)?;
        check_delete_options(&body)?;
        let mut state = s.store.lock();
        let Some(obj) = state.objects.remove(&(r, ns, name.clone())) else {
            return Err(ObjError::NotFound(r, name));
        };
        state.next_rv();
        let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
        // The real server answers a delete of these kinds with a Success status.
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": { "name": name, "kind": r.plural(), "uid": uid },
        });
        Ok(axum::Json(status).into_response())
    };
    answer(run.await)
}

async fn delete_collection(
    State(s): Shr,
    Path((ns, plural)): Path<(String, String)>,
    q: Params,
    body: Bytes,
) -> Response {
    let run = async {
        let r = resource(&plural)?;
        s.admit(Verb::DeleteCollection).await?;
        let p = params(q)?;
        reject_unsupported(r, &p)?;
        check_delete_options(&body)?;
        let filter = Filter::parse(&p)?;
        let mut state = s.store.lock();
        let keys: Vec<ObjKey> = state
            .objects
            .iter()
            .filter(|((kr, kns, _), obj)| *kr == r && *kns == ns && filter.matches(obj))
            .map(|(k, _)| k.clone())
            .collect();
        let items: Vec<Value> = keys
            .iter()
            .filter_map(|k| state.objects.remove(k))
            .collect();
        if !items.is_empty() {
            state.next_rv();
        }
        Ok(list_body(r, state.rv(), items))
    };
    answer(run.await)
}

// === validation and defaults ===

fn parse(r: Resource, body: &[u8]) -> Result<Map<String, Value>, Error> {
    let cannot = |why: String| {
        Error::BadRequest(format!(
            "{k} in version \"{v}\" cannot be handled as a {k}: {why}",
            v = r.api_version().rsplit('/').next().unwrap_or("v1"),
            k = r.kind()
        ))
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| cannot(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(cannot("not a JSON object".into()));
    };
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != r.kind()
    {
        return Err(cannot(format!("wrong kind {kind:?}")));
    }
    if let Some(v) = obj.get("apiVersion").and_then(Value::as_str)
        && v != r.api_version()
    {
        return Err(cannot(format!("wrong apiVersion {v:?}")));
    }
    Ok(obj)
}

fn is_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric())
        })
}

fn is_dns1035_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_config_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// Collects validation failures as (field path, message).
#[derive(Default)]
struct Causes(Vec<(String, String)>);

impl Causes {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push((field.into(), message.into()));
    }
}

/// Checks the string map at `field` (data keys), returning its total size in bytes.
fn check_data(
    obj: &Map<String, Value>,
    field: &str,
    is_base64: bool,
    causes: &mut Causes,
) -> Result<usize, Error> {
    let mut size = 0;
    match obj.get(field) {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                if !is_config_key(k) {
                    causes.add(
                        format!("{field}[{k}]"),
                        format!("Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
                    );
                }
                let Some(s) = v.as_str() else {
                    return Err(Error::BadRequest(format!(
                        "{field}[{k}]: expected a string, got {v}"
                    )));
                };
                size += k.len();
                if is_base64 {
                    let bytes = BASE64_STANDARD.decode(s).map_err(|_| {
                        Error::BadRequest(format!("{field}[{k}]: illegal base64 data in the value"))
                    })?;
                    size += bytes.len();
                } else {
                    size += s.len();
                }
            }
        }
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "{field}: expected an object of strings, got {other}"
            )));
        }
    }
    Ok(size)
}

fn validate_config_map(obj: &Map<String, Value>, causes: &mut Causes) -> Result<(), Error> {
    let size =
        check_data(obj, "data", false, causes)? + check_data(obj, "binaryData", true, causes)?;
    if let (Some(Value::Object(d)), Some(Value::Object(b))) =
        (obj.get("data"), obj.get("binaryData"))
    {
        for k in d.keys().filter(|k| b.contains_key(*k)) {
            causes.add(
                format!("data[{k}]"),
                format!("Invalid value: {k:?}: duplicate of key present in binaryData"),
            );
        }
    }
    if size > MAX_DATA_BYTES {
        causes.add(
            "[]",
            format!("Too long: may not be more than {MAX_DATA_BYTES} bytes"),
        );
    }
    Ok(())
}

/// Merges `stringData` into `data` (base64), as the real server does on write.
fn validate_secret(obj: &mut Map<String, Value>, causes: &mut Causes) -> Result<(), Error> {
    check_data(obj, "stringData", false, causes)?;
    if let Some(Value::Object(strings)) = obj.remove("stringData") {
        let data = obj
            .entry("data")
            .or_insert_with(|| Value::Object(Map::new()));
        if data.is_null() {
            *data = Value::Object(Map::new());
        }
        if let Value::Object(data) = data {
            for (k, v) in strings {
                let s = v.as_str().unwrap_or_default();
                data.insert(k, Value::String(BASE64_STANDARD.encode(s.as_bytes())));
            }
        }
    }
    let size = check_data(obj, "data", true, causes)?;
    if size > MAX_DATA_BYTES {
        causes.add(
            "data",
            format!("Too long: may not be more than {MAX_DATA_BYTES} bytes"),
        );
    }
    if obj.get("type").is_none_or(Value::is_null) {
        obj.insert("type".into(), Value::String("Opaque".into()));
    }
    Ok(())
}

fn validate_service(
    obj: &mut Map<String, Value>,
    state: &mut StoreState,
    causes: &mut Causes,
) -> Result<(), Error> {
    let Some(Value::Object(spec)) = obj.get_mut("spec") else {
        causes.add("spec.ports", "Required value");
        return Ok(());
    };
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty.as_str()) {
        causes.add(
            "spec.type",
            format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        );
    }
    spec.insert("type".into(), Value::String(ty.clone()));
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = match spec.get_mut("ports") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ports)) => std::mem::take(ports),
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "spec.ports: expected an array, got {other}"
            )));
        }
    };
    if ports.is_empty() && !headless && ty != "ExternalName" {
        causes.add("spec.ports", "Required value");
    }
    let many = ports.len() > 1;
    let mut out = Vec::with_capacity(ports.len());
    for (i, mut port) in ports.into_iter().enumerate() {
        let Some(p) = port.as_object_mut() else {
            return Err(Error::BadRequest(format!(
                "spec.ports[{i}]: expected an object"
            )));
        };
        let number = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&number) {
            causes.add(
                format!("spec.ports[{i}].port"),
                format!("Invalid value: {number}: must be between 1 and 65535, inclusive"),
            );
        }
        if many
            && p.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            causes.add(format!("spec.ports[{i}].name"), "Required value");
        }
        p.entry("protocol").or_insert_with(|| json!("TCP"));
        p.entry("targetPort").or_insert_with(|| json!(number));
        out.push(port);
    }
    spec.insert("ports".into(), Value::Array(out));
    spec.entry("sessionAffinity")
        .or_insert_with(|| json!("None"));
    if ty != "ExternalName" && spec.get("clusterIP").is_none_or(Value::is_null) {
        // A stable address from the service range, unique per created service.
        let ip = super::kubelet::nth_address("10.96", state.next_rv());
        spec.insert("clusterIP".into(), Value::String(ip.clone()));
        spec.insert("clusterIPs".into(), json!([ip]));
    }
    obj.insert("status".into(), json!({ "loadBalancer": {} }));
    Ok(())
}

fn validate_pvc(obj: &mut Map<String, Value>, causes: &mut Causes) {
    let spec = obj.get("spec");
    let modes = spec
        .and_then(|s| s.get("accessModes"))
        .and_then(Value::as_array);
    if modes.is_none_or(Vec::is_empty) {
        causes.add(
            "spec.accessModes",
            "Required value: at least 1 access mode is required",
        );
    }
    let storage = spec
        .and_then(|s| s.pointer("/resources/requests/storage"))
        .and_then(Value::as_str);
    match storage {
        None => causes.add("spec.resources[storage]", "Required value"),
        Some(q) if super::quantity::parse_scaled(q, 1).is_none() => {
            causes.add(
                "spec.resources[storage]",
                format!("Invalid value: {q:?}: must be a quantity"),
            );
        }
        Some(_) => {}
    }
    obj.insert("status".into(), json!({ "phase": "Pending" }));
}

/// Names, validates, defaults and stores a new object.
/// A NetworkPolicy needs `spec.podSelector` (`{}` selects every pod); nothing is enforced.
fn validate_network_policy(obj: &Map<String, Value>, causes: &mut Causes) {
    if !obj
        .get("spec")
        .and_then(|s| s.get("podSelector"))
        .is_some_and(Value::is_object)
    {
        causes.add("spec.podSelector", "Required value");
    }
}

fn insert(
    state: &mut StoreState,
    ns: &str,
    r: Resource,
    mut obj: Map<String, Value>,
) -> Result<Value, ObjError> {
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else {
        return Err(Error::BadRequest("metadata: expected an object".into()).into());
    };
    if let Some(body_ns) = meta.get("namespace").and_then(Value::as_str)
        && body_ns != ns
    {
        return Err(Error::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )
        .into());
    }
    let given = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let prefix = meta
        .get("generateName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let name = match (given, prefix) {
        (Some(n), _) => n.to_owned(),
        (None, Some(p)) => format!("{p}{:05x}", state.next_rv()),
        (None, None) => {
            return Err(ObjError::Invalid(
                r,
                String::new(),
                vec![(
                    "metadata.name".into(),
                    "Required value: name or generateName is required".into(),
                )],
            ));
        }
    };
    let mut causes = Causes::default();
    let name_ok = match r {
        Resource::Services => is_dns1035_label(&name),
        _ => is_subdomain(&name),
    };
    if !name_ok {
        let rule = match r {
            Resource::Services => {
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"
            }
            _ => {
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            }
        };
        causes.add("metadata.name", format!("Invalid value: {name:?}: {rule}"));
    }
    if let Some(labels) = meta.get("labels").filter(|l| !l.is_null()) {
        let ok = labels
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string));
        if !ok {
            return Err(
                Error::BadRequest("metadata.labels: expected a map of strings".into()).into(),
            );
        }
    }
    meta.insert("name".into(), Value::String(name.clone()));
    meta.insert("namespace".into(), Value::String(ns.to_owned()));
    match r {
        Resource::ConfigMaps => validate_config_map(&obj, &mut causes)?,
        Resource::Secrets => validate_secret(&mut obj, &mut causes)?,
        Resource::Services => validate_service(&mut obj, state, &mut causes)?,
        Resource::PersistentVolumeClaims => validate_pvc(&mut obj, &mut causes),
        Resource::NetworkPolicies => validate_network_policy(&obj, &mut causes),
    }
    if !causes.0.is_empty() {
        return Err(ObjError::Invalid(r, name, causes.0));
    }
    let key = (r, ns.to_owned(), name.clone());
    if state.objects.contains_key(&key) {
        return Err(ObjError::AlreadyExists(r, name));
    }
    let rv = state.next_rv();
    obj.insert("kind".into(), Value::String(r.kind().into()));
    obj.insert("apiVersion".into(), Value::String(r.api_version().into()));
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.insert(
            "uid".into(),
            Value::String(format!("00000000-0000-4000-9000-{rv:012x}")),
        );
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        meta.insert(
            "creationTimestamp".into(),
            serde_json::to_value(now_time()).unwrap_or(Value::Null),
        );
        for server_owned in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            meta.remove(server_owned);
        }
    }
    let value = Value::Object(obj);
    state.objects.insert(key, value.clone());
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_real_rules() {
        assert!(is_subdomain("spark-exec-1.conf"));
        assert!(!is_subdomain("Spark"));
        assert!(!is_subdomain("a..b"));
        assert!(!is_subdomain("-a"));
        assert!(is_dns1035_label("spark-driver-svc"));
        assert!(!is_dns1035_label("1abc"));
        assert!(!is_dns1035_label("a.b"));
        assert!(!is_dns1035_label(&"a".repeat(64)));
        assert!(is_config_key("spark.properties"));
        assert!(!is_config_key("a/b"));
        assert!(!is_config_key(".."));
    }
}
