//! `/openapi/v3`: just enough of the OpenAPI v3 documents for `kubectl create -f` and
//! `kubectl apply -f` to validate on the server side.
//!
//! kubectl (1.27+) validates by default: it first reads the OpenAPI v3 document of the object's
//! group/version and looks for a PATCH operation of its kind (`x-kubernetes-group-version-kind`)
//! that takes the `fieldValidation` query parameter; if there is one it sends
//! `fieldValidation=Strict` and leaves validation to the server, otherwise it validates on the
//! client with the OpenAPI v2 schemas (`/openapi/v2`, which the fake does not serve: "failed to
//! download openapi"). The documents here hold exactly that operation for every kind the fake
//! creates, and no schemas. Invariant: the kinds listed here are the ones the discovery
//! documents list (`objects.rs`, `daemonsets.rs`, `admission/`); keep them in step.
//!
//! What this does not do: the fake accepts `fieldValidation` and ignores it (unknown fields are
//! dropped, not refused as `Strict` would), and a PATCH listed here may still be answered 405
//! for kinds the fake cannot patch (see `testkit/README.md`, Gaps).

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// A served kind: (plural, kind, namespaced).
type Kind = (&'static str, &'static str, bool);

/// Kinds by group/version path (as in `/openapi/v3/<path>`).
const KINDS: &[(&str, &[Kind])] = &[
    (
        "api/v1",
        &[
            ("pods", "Pod", true),
            ("configmaps", "ConfigMap", true),
            ("secrets", "Secret", true),
            ("services", "Service", true),
            ("persistentvolumeclaims", "PersistentVolumeClaim", true),
            ("namespaces", "Namespace", false),
        ],
    ),
    ("apis/apps/v1", &[("daemonsets", "DaemonSet", true)]),
    (
        "apis/admissionregistration.k8s.io/v1",
        &[(
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            false,
        )],
    ),
    (
        "apis/networking.k8s.io/v1",
        &[("networkpolicies", "NetworkPolicy", true)],
    ),
];

/// The routes of this module.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/openapi/v3", get(root))
        .route("/openapi/v3/{*gv}", get(group_version))
}

/// The index: one entry per group/version, its document's URL.
async fn root() -> Response {
    let paths: serde_json::Map<String, Value> = KINDS
        .iter()
        .map(|(gv, _)| {
            let url = format!("/openapi/v3/{gv}?hash=kshuffle-testkit");
            ((*gv).to_owned(), json!({ "serverRelativeURL": url }))
        })
        .collect();
    axum::Json(json!({ "paths": paths })).into_response()
}

/// The document of one group/version: a PATCH operation per kind, with `fieldValidation`.
async fn group_version(Path(gv): Path<String>) -> Response {
    let Some((_, kinds)) = KINDS.iter().find(|(path, _)| *path == gv) else {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound", "code": 404,
        });
        return (StatusCode::NOT_FOUND, axum::Json(status)).into_response();
    };
    let (group, version) = match gv.strip_prefix("apis/") {
        Some(rest) => rest.split_once('/').unwrap_or((rest, "")),
        None => ("", gv.trim_start_matches("api/")),
    };
    let mut paths = serde_json::Map::new();
    for (plural, kind, namespaced) in kinds.iter() {
        let scope = if *namespaced {
            "/namespaces/{namespace}"
        } else {
            ""
        };
        let path = format!("/{gv}{scope}/{plural}/{{name}}");
        let patch = json!({
            "operationId": format!("patch{kind}"),
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": { "group": group, "version": version, "kind": kind },
            "parameters": [
                { "name": "fieldValidation", "in": "query", "schema": { "type": "string" } },
                { "name": "fieldManager", "in": "query", "schema": { "type": "string" } },
            ],
            "responses": { "200": { "description": "OK" } },
        });
        paths.insert(path, json!({ "patch": patch }));
    }
    axum::Json(json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes (kshuffle-testkit fake)", "version": "v1" },
        "paths": paths,
    }))
    .into_response()
}
