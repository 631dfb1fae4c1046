//! Typed objects of the kinds added for the simulated cluster (Namespaces,
//! MutatingWebhookConfigurations, DaemonSets), kept as their k8s-openapi types: create, get,
//! list and delete with the real server's bookkeeping (`uid`, `creationTimestamp`,
//! `generation`, `resourceVersion` from the one shared counter) and its `Status` errors, whose
//! messages name the group-qualified resource (`daemonsets.apps "x" not found`).
//!
//! Invariant: the collections live behind their own locks, but every change takes its
//! `resourceVersion` from the pod store's counter ([`StoreState::next_rv`]), as etcd's revision
//! is shared by all kinds. No watch events are emitted for these kinds.

use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as MetaSelector, ObjectMeta};
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::selector::LabelSelector;
use super::status::Error;
use super::store::{State as StoreState, now_time};

/// An error about a typed object, rendered as the real server's `Status`.
#[derive(Debug)]
pub enum KindError {
    /// 404 NotFound: (qualified resource, name).
    NotFound(String, String),
    /// 409 AlreadyExists: (qualified resource, name).
    AlreadyExists(String, String),
    /// 422 Invalid: (kind, name, `field: message` causes).
    Invalid(&'static str, String, Vec<(String, String)>),
    /// Any error shared with pods.
    Api(Error),
}

impl From<Error> for KindError {
    fn from(e: Error) -> Self {
        Self::Api(e)
    }
}

impl IntoResponse for KindError {
    fn into_response(self) -> Response {
        let (code, reason, message, details) = match self {
            Self::Api(e) => return e.into_response(),
            Self::NotFound(r, name) => (
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{r} \"{name}\" not found"),
                json!({ "name": name, "kind": r }),
            ),
            Self::AlreadyExists(r, name) => (
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{r} \"{name}\" already exists"),
                json!({ "name": name, "kind": r }),
            ),
            Self::Invalid(kind, name, causes) => {
                let text: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
                let causes: Vec<Value> = causes
                    .iter()
                    .map(
                        |(f, m)| json!({ "reason": "FieldValueInvalid", "message": m, "field": f }),
                    )
                    .collect();
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("{kind} \"{name}\" is invalid: {}", text.join(", ")),
                    json!({ "name": name, "kind": kind, "causes": causes }),
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

/// `plural` or `plural.group`, as the real server names a resource in messages.
pub fn qualified<T: Resource>() -> String {
    if T::GROUP.is_empty() {
        T::URL_PATH_SEGMENT.to_owned()
    } else {
        format!("{}.{}", T::URL_PATH_SEGMENT, T::GROUP)
    }
}

/// Whether a name is a lowercase RFC 1123 subdomain.
pub fn is_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Parses a request body as `T`, checking `kind` as the real server's decoder does.
///
/// # Errors
/// 400 BadRequest with the real server's wording.
pub fn parse<T: Resource + DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let cannot = |e: String| {
        Error::BadRequest(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
            kind = T::KIND,
            v = T::VERSION
        ))
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| cannot(e.to_string()))?;
    if let Some(kind) = value.get("kind").and_then(Value::as_str)
        && kind != T::KIND
    {
        return Err(cannot(format!("wrong kind {kind:?}")));
    }
    serde_json::from_value(value).map_err(|e| cannot(e.to_string()))
}

/// A list answer: `{kind}List` with the store's current `resourceVersion`.
pub fn list_body<T: Resource + Serialize>(rv: u64, items: &[T]) -> Response {
    axum::Json(json!({
        "kind": format!("{}List", T::KIND), "apiVersion": T::API_VERSION,
        "metadata": { "resourceVersion": rv.to_string() }, "items": items,
    }))
    .into_response()
}

/// The discovery document of a group version serving only `T`: create, get, list, delete.
pub fn resource_list<T: Resource>(short_names: &[&str], namespaced: bool) -> Response {
    axum::Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": T::API_VERSION,
        "resources": [{
            "name": T::URL_PATH_SEGMENT, "singularName": T::KIND.to_ascii_lowercase(),
            "namespaced": namespaced, "kind": T::KIND, "shortNames": short_names,
            "verbs": ["create", "delete", "get", "list"],
        }],
    }))
    .into_response()
}

/// The query parameters of a request, or 400.
///
/// # Errors
/// 400 BadRequest when the query does not parse.
pub fn params(
    q: Result<
        axum::extract::Query<HashMap<String, String>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<HashMap<String, String>, Error> {
    q.map(|axum::extract::Query(m)| m)
        .map_err(|e| Error::BadRequest(format!("invalid query: {e}")))
}

/// Refuses `dryRun` and `watch`, which these kinds do not serve.
///
/// # Errors
/// 400 BadRequest naming what is not supported.
pub fn reject_unsupported<T: Resource>(p: &HashMap<String, String>) -> Result<(), Error> {
    if p.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(Error::BadRequest(
            "dryRun is not supported by the fake API server".into(),
        ));
    }
    if p.get("watch").is_some_and(|v| v == "true" || v == "1") {
        return Err(Error::BadRequest(format!(
            "watch of {} is not supported by the fake API server",
            qualified::<T>()
        )));
    }
    Ok(())
}

/// Whether `labels` match a `metav1.LabelSelector` (`None` matches everything, as the real
/// server defaults an unset webhook selector to `{}`). An unknown operator matches nothing
/// (creation validates operators first).
pub fn selector_matches(sel: Option<&MetaSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel else { return true };
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let got = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => got.is_some_and(|v| values.contains(v)),
            "NotIn" => got.is_none_or(|v| !values.contains(v)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Checks the operators and values of a `metav1.LabelSelector`, as validation does.
pub fn check_selector(sel: Option<&MetaSelector>, field: &str, causes: &mut Vec<(String, String)>) {
    for (i, e) in sel
        .and_then(|s| s.match_expressions.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let n = e.values.as_ref().map_or(0, Vec::len);
        let f = format!("{field}.matchExpressions[{i}]");
        match e.operator.as_str() {
            "In" | "NotIn" if n == 0 => causes.push((
                format!("{f}.values"),
                "Required value: must be specified when `operator` is 'In' or 'NotIn'".into(),
            )),
            "Exists" | "DoesNotExist" if n > 0 => causes.push((
                format!("{f}.values"),
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                    .into(),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push((
                format!("{f}.operator"),
                format!("Invalid value: {other:?}: not a valid selector operator"),
            )),
        }
    }
}

/// Objects of one kind by (namespace, name); the namespace is empty for cluster-scoped kinds.
#[derive(Debug)]
pub struct Kept<T> {
    /// The stored objects.
    pub items: BTreeMap<(String, String), T>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
        }
    }
}

// === impl Kept ===

impl<T> Kept<T>
where
    T: Clone + Resource + Metadata<Ty = ObjectMeta>,
{
    /// Stores a new object: name (or `generateName`), namespace, `uid`, `creationTimestamp`,
    /// `generation` 1 and the next `resourceVersion` are the server's.
    ///
    /// # Errors
    /// 422 for a missing or malformed name, 409 AlreadyExists.
    pub fn create(&mut self, state: &mut StoreState, ns: &str, mut obj: T) -> Result<T, KindError> {
        let meta = obj.metadata_mut();
        if let Some(body_ns) = meta.namespace.as_deref().filter(|n| !n.is_empty())
            && body_ns != ns
        {
            return Err(Error::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            )
            .into());
        }
        let name = match (meta.name.clone(), meta.generate_name.clone()) {
            (Some(n), _) if !n.is_empty() => n,
            (_, Some(prefix)) if !prefix.is_empty() => {
                format!("{prefix}{}", super::store::random_suffix(state.rv()))
            }
            _ => {
                return Err(KindError::Invalid(
                    T::KIND,
                    String::new(),
                    vec![(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
        };
        if !is_subdomain(&name) {
            return Err(KindError::Invalid(
                T::KIND,
                name.clone(),
                vec![(
                    "metadata.name".into(),
                    format!(
                        "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
                    ),
                )],
            ));
        }
        let key = (ns.to_owned(), name.clone());
        if self.items.contains_key(&key) {
            return Err(KindError::AlreadyExists(qualified::<T>(), name));
        }
        let rv = state.next_rv();
        meta.name = Some(name);
        meta.namespace = (!ns.is_empty()).then(|| ns.to_owned());
        meta.uid = Some(format!("00000000-0000-4000-9000-{rv:012x}"));
        meta.creation_timestamp = Some(now_time());
        meta.deletion_timestamp = None;
        meta.generation = Some(1);
        meta.resource_version = Some(rv.to_string());
        self.items.insert(key, obj.clone());
        Ok(obj)
    }

    /// One object.
    ///
    /// # Errors
    /// 404 NotFound.
    pub fn get(&self, ns: &str, name: &str) -> Result<T, KindError> {
        self.items
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| KindError::NotFound(qualified::<T>(), name.to_owned()))
    }

    /// The objects of a namespace (`None`: all), matching a label selector, by key.
    pub fn list(&self, ns: Option<&str>, sel: &LabelSelector) -> Vec<T> {
        self.items
            .iter()
            .filter(|((kns, _), o)| {
                ns.is_none_or(|n| n == kns) && sel.matches(o.metadata().labels.as_ref())
            })
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Removes an object at once, stamping a final `resourceVersion`.
    ///
    /// # Errors
    /// 404 NotFound.
    pub fn remove(&mut self, state: &mut StoreState, ns: &str, name: &str) -> Result<T, KindError> {
        let mut obj = self
            .items
            .remove(&(ns.to_owned(), name.to_owned()))
            .ok_or_else(|| KindError::NotFound(qualified::<T>(), name.to_owned()))?;
        let rv = state.next_rv();
        let meta = obj.metadata_mut();
        meta.resource_version = Some(rv.to_string());
        meta.deletion_timestamp = Some(now_time());
        Ok(obj)
    }
}
