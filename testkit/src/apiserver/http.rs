//! The HTTP routes of the fake API server: core/v1 pods, as a `kube` client calls them.
//!
//! | route | verbs |
//! |---|---|
//! | `/api/v1/namespaces/{ns}/pods` | GET (list, or watch with `watch=true`), POST, DELETE (collection) |
//! | `/api/v1/namespaces/{ns}/pods/{name}` | GET, PUT, PATCH (merge), DELETE |
//! | `/api/v1/pods` | GET (list or watch across namespaces) |
//! | `/version` | GET |
//!
//! Every answer that is not the object is a `Status` (see `status.rs`). A watch answers 200
//! and streams one JSON event per line, or, when the request asks for a WebSocket upgrade
//! (fabric8 does), answers 101 and sends one event per text message (`websocket.rs`); a
//! too-old `resourceVersion` is an ERROR event with a 410 `Status`, exactly as the real
//! server sends it, so clients relist.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::selector::{FieldSelector, LabelSelector, Selectors};
use super::status::Error;
use super::store::{Event, EventType, ListPage};
use super::websocket::MaybeUpgrade;
use super::{Outage, Shared, Verb, merge, websocket};

type Shr = State<Arc<Shared>>;
type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// The router over shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/api/v1/namespaces/{ns}/pods",
            get(list_or_watch_ns).post(create).delete(delete_collection),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}",
            get(get_pod).put(replace).patch(patch).delete(delete),
        )
        .route("/api/v1/pods", get(list_or_watch_all))
        .route("/version", get(version))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

async fn not_found() -> Response {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "the server could not find the requested resource",
        "reason": "NotFound", "code": 404,
    });
    (StatusCode::NOT_FOUND, axum::Json(status)).into_response()
}

async fn method_not_allowed() -> Response {
    Error::MethodNotAllowed.into_response()
}

async fn version() -> Response {
    axum::Json(json!({
        "major": "1", "minor": "37", "gitVersion": "v1.37.0-kshuffle-testkit",
        "platform": "linux/amd64",
    }))
    .into_response()
}

fn params(q: Params) -> Result<HashMap<String, String>, Error> {
    q.map(|Query(m)| m)
        .map_err(|e| Error::BadRequest(format!("invalid query: {e}")))
}

fn flag(p: &HashMap<String, String>, name: &str) -> bool {
    p.get(name).is_some_and(|v| v == "true" || v == "1")
}

fn num<T: std::str::FromStr>(p: &HashMap<String, String>, name: &str) -> Result<Option<T>, Error> {
    match p.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::BadRequest(format!("invalid value for {name}: {v:?}"))),
    }
}

fn selectors(p: &HashMap<String, String>) -> Result<Selectors, Error> {
    Ok(Selectors {
        labels: LabelSelector::parse(p.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(p.get("fieldSelector").map_or("", String::as_str))?,
    })
}

fn reject_dry_run(p: &HashMap<String, String>) -> Result<(), Error> {
    if p.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(Error::BadRequest(
            "dryRun is not supported by the fake API server".into(),
        ));
    }
    Ok(())
}

fn parse_pod(body: &[u8]) -> Result<Pod, Error> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Error::BadRequest(format!(
            "Pod in version \"v1\" cannot be handled as a Pod: {e}"
        ))
    })?;
    if let Some(kind) = value.get("kind").and_then(Value::as_str)
        && kind != "Pod"
    {
        return Err(Error::BadRequest(format!(
            "Pod in version \"v1\" cannot be handled as a Pod: wrong kind {kind:?}"
        )));
    }
    serde_json::from_value(value).map_err(|e| {
        Error::BadRequest(format!(
            "Pod in version \"v1\" cannot be handled as a Pod: {e}"
        ))
    })
}

fn list_body(page: ListPage) -> Response {
    let mut meta = json!({ "resourceVersion": page.rv.to_string() });
    if let (Some(token), Some(obj)) = (page.continue_token, meta.as_object_mut()) {
        obj.insert("continue".into(), Value::String(token));
    }
    axum::Json(json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": page.items,
    }))
    .into_response()
}

async fn list_or_watch_ns(s: Shr, Path(ns): Path<String>, ws: MaybeUpgrade, q: Params) -> Response {
    list_or_watch(s, Some(ns), ws, q)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn list_or_watch_all(s: Shr, ws: MaybeUpgrade, q: Params) -> Response {
    list_or_watch(s, None, ws, q)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn list_or_watch(
    State(s): Shr,
    ns: Option<String>,
    MaybeUpgrade(ws): MaybeUpgrade,
    q: Params,
) -> Result<Response, Error> {
    let p = params(q)?;
    if flag(&p, "watch") {
        s.admit(Verb::Watch).await?;
        let events = watch_events(Arc::clone(&s), ns, &p)?;
        return Ok(match ws {
            // One event per text message, as the real server's watch over WebSocket.
            Some(ws) => websocket::serve(ws, events, s.cancel.clone()),
            None => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(events.map(Ok::<_, std::io::Error>)),
            )
                .into_response(),
        });
    }
    if ws.is_some() {
        return Err(Error::BadRequest(
            "a WebSocket upgrade is only served for watch=true".into(),
        ));
    }
    s.admit(Verb::List).await?;
    let sel = selectors(&p)?;
    if let Some(m) = p.get("resourceVersionMatch").filter(|m| !m.is_empty())
        && m != "NotOlderThan"
        && m != "Exact"
    {
        return Err(Error::BadRequest(format!(
            "invalid resourceVersionMatch: {m:?}"
        )));
    }
    let rv0 = p.get("resourceVersion").is_some_and(|v| v == "0");
    // resourceVersion=0 is served from the watch cache, which ignores `limit`.
    let limit = if rv0 {
        None
    } else {
        num::<usize>(&p, "limit")?
    };
    let page = s.store.list(
        ns.as_deref(),
        &sel,
        limit,
        p.get("continue").map(String::as_str),
    )?;
    Ok(list_body(page))
}

async fn get_pod(
    State(s): Shr,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, Error> {
    s.admit(Verb::Get).await?;
    Ok(axum::Json(s.store.get(&ns, &name)?).into_response())
}

async fn create(
    State(s): Shr,
    Path(ns): Path<String>,
    q: Params,
    body: Bytes,
) -> Result<Response, Error> {
    s.admit(Verb::Create).await?;
    reject_dry_run(&params(q)?)?;
    let pod = parse_pod(&body)?;
    let created =
        super::admission::create_pod(&s, &ns, pod, super::admission::User::Anonymous).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

async fn replace(
    State(s): Shr,
    Path((ns, name)): Path<(String, String)>,
    q: Params,
    body: Bytes,
) -> Result<Response, Error> {
    s.admit(Verb::Update).await?;
    reject_dry_run(&params(q)?)?;
    let new = parse_pod(&body)?;
    if let Some(body_name) = new.metadata.name.as_deref()
        && body_name != name
    {
        return Err(Error::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let expected = new.metadata.resource_version.clone();
    let updated = s
        .store
        .update(&ns, &name, expected.as_deref(), move |pod| {
            // PUT on the main resource leaves the status alone (it is a subresource).
            let status = pod.status.take();
            *pod = new;
            pod.status = status;
            Ok(())
        })?;
    Ok(axum::Json(updated).into_response())
}

async fn patch(
    State(s): Shr,
    Path((ns, name)): Path<(String, String)>,
    q: Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    s.admit(Verb::Patch).await?;
    reject_dry_run(&params(q)?)?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/merge-patch+json")
        && !ctype.starts_with("application/strategic-merge-patch+json")
    {
        return Err(Error::UnsupportedMediaType(
            "application/merge-patch+json, application/strategic-merge-patch+json",
        ));
    }
    let patch: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest(format!("error decoding patch: {e}")))?;
    if !patch.is_object() {
        return Err(Error::BadRequest(
            "error decoding patch: not a JSON object".into(),
        ));
    }
    let expected = patch
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let updated = s.store.update(&ns, &name, expected.as_deref(), |pod| {
        let mut doc = serde_json::to_value(&*pod)
            .map_err(|e| Error::BadRequest(format!("cannot encode pod: {e}")))?;
        merge::merge(&mut doc, &patch);
        *pod = serde_json::from_value(doc).map_err(|e| Error::Invalid {
            name: name.clone(),
            reason: format!("patched object is not a Pod: {e}"),
        })?;
        Ok(())
    })?;
    Ok(axum::Json(updated).into_response())
}

/// `DeleteOptions` from the body (kube sends them there) or the query.
struct DeleteOpts {
    grace: Option<i64>,
    precondition: Option<(Option<String>, Option<String>)>,
}

fn delete_opts(p: &HashMap<String, String>, body: &[u8]) -> Result<DeleteOpts, Error> {
    reject_dry_run(p)?;
    let mut grace = num::<i64>(p, "gracePeriodSeconds")?;
    let mut precondition = None;
    if !body.iter().all(u8::is_ascii_whitespace) {
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
        if let Some(g) = v.get("gracePeriodSeconds").filter(|g| !g.is_null()) {
            grace = Some(g.as_i64().ok_or_else(|| {
                Error::BadRequest("invalid DeleteOptions: gracePeriodSeconds".into())
            })?);
        }
        if let Some(pre) = v.get("preconditions").filter(|p| !p.is_null()) {
            let field = |n: &str| pre.get(n).and_then(Value::as_str).map(str::to_owned);
            precondition = Some((field("uid"), field("resourceVersion")));
        }
    }
    Ok(DeleteOpts {
        grace,
        precondition,
    })
}

async fn delete(
    State(s): Shr,
    Path((ns, name)): Path<(String, String)>,
    q: Params,
    body: Bytes,
) -> Result<Response, Error> {
    s.admit(Verb::Delete).await?;
    let opts = delete_opts(&params(q)?, &body)?;
    let pod = s.store.delete(&ns, &name, opts.grace, opts.precondition)?;
    Ok(axum::Json(pod).into_response())
}

async fn delete_collection(
    State(s): Shr,
    Path(ns): Path<String>,
    q: Params,
    body: Bytes,
) -> Result<Response, Error> {
    s.admit(Verb::DeleteCollection).await?;
    let p = params(q)?;
    let opts = delete_opts(&p, &body)?;
    let sel = selectors(&p)?;
    let items = s.store.delete_collection(&ns, &sel, opts.grace);
    let rv = s.store.lock().rv();
    Ok(list_body(ListPage {
        items,
        rv,
        continue_token: None,
    }))
}

// === watch ===

struct Watch {
    shared: Arc<Shared>,
    ns: Option<String>,
    sel: Selectors,
    initial: VecDeque<Arc<Event>>,
    rx: broadcast::Receiver<Arc<Event>>,
    last_rv: u64,
    bookmarks: bool,
    next_bookmark: Instant,
    deadline: Instant,
    outage: tokio::sync::watch::Receiver<Option<Outage>>,
    done: bool,
}

fn line(value: &Value) -> Bytes {
    let mut v = serde_json::to_vec(value).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

impl Watch {
    /// The line to send for an event, if this watch sees it (namespace and selectors; a
    /// MODIFIED that enters or leaves the selection is sent as ADDED or DELETED).
    fn render(&self, ev: &Event) -> Option<Bytes> {
        if self
            .ns
            .as_deref()
            .is_some_and(|ns| ev.object.metadata.namespace.as_deref() != Some(ns))
        {
            return None;
        }
        let now = self.sel.matches(&ev.object);
        let before = ev.previous.as_ref().is_some_and(|p| self.sel.matches(p));
        let kind = match (ev.kind, before, now) {
            (EventType::Added, _, true) => EventType::Added,
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, false) => EventType::Deleted,
            (EventType::Deleted, _, true) => EventType::Deleted,
            _ => return None,
        };
        Some(line(
            &json!({ "type": kind.as_str(), "object": &ev.object }),
        ))
    }

    fn bookmark(&self) -> Bytes {
        line(&json!({
            "type": "BOOKMARK",
            "object": {
                "kind": "Pod", "apiVersion": "v1",
                "metadata": { "resourceVersion": self.last_rv.to_string() },
            },
        }))
    }

    async fn next(&mut self) -> Option<Bytes> {
        while !self.done {
            if let Some(ev) = self.initial.pop_front() {
                if let Some(l) = self.render(&ev) {
                    return Some(l);
                }
                continue;
            }
            if self.outage.borrow_and_update().is_some() {
                return None;
            }
            tokio::select! {
                () = self.shared.cancel.cancelled() => return None,
                _ = self.outage.changed() => continue,
                () = tokio::time::sleep_until(self.deadline) => return None,
                r = self.rx.recv() => match r {
                    Ok(ev) => {
                        self.last_rv = self.last_rv.max(ev.rv);
                        if let Some(l) = self.render(&ev) {
                            return Some(l);
                        }
                    }
                    // A watcher too slow for the buffer is cut off, as the real server does;
                    // the client resumes from its last version.
                    Err(_) => return None,
                },
                () = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                    self.next_bookmark = Instant::now() + self.shared.bookmark_interval;
                    // Only when every event up to last_rv went out, so the bookmark skips none.
                    if self.rx.is_empty() {
                        return Some(self.bookmark());
                    }
                }
            }
        }
        None
    }
}

/// The events of a watch, one JSON line each: an ERROR event with a 410 `Status` when the
/// starting version is too old (the real server answers 200 and sends it as an event).
fn watch_events(
    s: Arc<Shared>,
    ns: Option<String>,
    p: &HashMap<String, String>,
) -> Result<BoxStream<'static, Bytes>, Error> {
    let sel = selectors(p)?;
    let from = num::<u64>(p, "resourceVersion")?;
    let timeout = num::<u64>(p, "timeoutSeconds")?
        .map(Duration::from_secs)
        .map_or(s.max_watch, |t| t.min(s.max_watch));
    let outage = s.outage.subscribe();
    let bookmarks = flag(p, "allowWatchBookmarks");
    let now = Instant::now();
    let start = s.store.watch(ns.as_deref(), from);
    Ok(match start {
        Err(err) => {
            let ev = line(&json!({ "type": "ERROR", "object": err.to_status() }));
            futures::stream::once(async move { ev }).boxed()
        }
        Ok(start) => {
            let w = Watch {
                shared: Arc::clone(&s),
                ns,
                sel,
                initial: start.initial.into(),
                rx: start.rx,
                last_rv: start.rv,
                bookmarks,
                next_bookmark: now + s.bookmark_interval,
                deadline: now + timeout,
                outage,
                done: false,
            };
            futures::stream::unfold(w, |mut w| async move {
                let item = w.next().await?;
                Some((item, w))
            })
            .boxed()
        }
    })
}
