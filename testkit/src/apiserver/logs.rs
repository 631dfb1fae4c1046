//! `GET /api/v1/namespaces/{ns}/pods/{name}/log`: a container's log, for `kubectl logs`, from
//! the files the process kubelet writes (`<work dir>/pods/<ns>/<pod>/`: `stdout`/`stderr` of
//! the first main container, `<container>.stdout`/`.stderr` of the others).
//!
//! The answer is the container's stdout followed by its stderr (the kubelet keeps them in two
//! files, so their interleaving is lost), as `text/plain`; `tailLines` keeps the last lines.
//! `follow`, `previous`, `since*`, `timestamps` and `limitBytes` are not implemented (the
//! whole log so far is returned once). Errors as the real server's: 404 for a pod that does
//! not exist, 400 when the pod has several containers and none is named or the name is not
//! one of its containers. With the simulated kubelet (no processes) a log is empty.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::kubelet::ProcessKubelet;
use super::{Error, Shared, Verb};

/// The state of the log route: the server and, if any, the process kubelet (its files).
type LogState = (Arc<Shared>, Option<ProcessKubelet>);

/// The routes of this module.
pub fn router(shared: Arc<Shared>, kubelet: Option<ProcessKubelet>) -> Router {
    Router::new()
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(log))
        .with_state((shared, kubelet))
}

async fn log(
    State((shared, kubelet)): State<LogState>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(e) = shared.admit(Verb::Get).await {
        return e.into_response();
    }
    let pod = match shared.store.get(&ns, &name) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let spec = pod.spec.unwrap_or_default();
    let mains: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
    let inits: Vec<String> = spec
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect();
    let container = match q.get("container") {
        Some(c) if mains.contains(c) || inits.contains(c) => c.clone(),
        Some(c) => {
            return Error::BadRequest(format!("container {c} is not valid for pod {name}"))
                .into_response();
        }
        None => match mains.as_slice() {
            [only] => only.clone(),
            _ => {
                return Error::BadRequest(format!(
                    "a container name must be specified for pod {name}, choose one of: {mains:?}"
                ))
                .into_response();
            }
        },
    };
    let Some(kubelet) = kubelet else {
        return text(String::new());
    };
    let dir = kubelet.pod_dir(&ns, &name);
    let first = mains.first().is_some_and(|m| *m == container);
    let file = |stream: &str| -> PathBuf {
        if first {
            dir.join(stream)
        } else {
            dir.join(format!("{container}.{stream}"))
        }
    };
    let (out, err) = (file("stdout"), file("stderr"));
    let read = tokio::task::spawn_blocking(move || {
        let mut all = std::fs::read(out).unwrap_or_default();
        all.extend(std::fs::read(err).unwrap_or_default());
        all
    })
    .await
    .unwrap_or_default();
    let mut body = String::from_utf8_lossy(&read).into_owned();
    if let Some(n) = q.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        let lines: Vec<&str> = body.lines().collect();
        let keep = lines.len().saturating_sub(n);
        body = lines.get(keep..).unwrap_or_default().join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
    }
    text(body)
}

fn text(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}
