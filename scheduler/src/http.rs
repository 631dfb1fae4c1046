//! The HTTP/JSON allocation API, for drivers in other languages, next to `/live`, `/ready`
//! and `/metrics`.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `PUT /v1/executors/total` | `{"total": n}` | `{"total": n}` |
//! | `POST /v1/executors/kill` | `{"ids": [1, 2]}` | `{"killed": [1, 2]}` (unknown ids left out) |
//! | `GET /v1/executors` | | `{"counts": {...}, "executors": [{"id", "name", "state", ...}]}` |
//! | `GET /v1/executors/{id}/deleted` | | `{"deleted": bool}` |
//! | `GET /v1/events?after=N` | | `{"events": [{"seq", "event": "added"\|"removed", "id", "reason"}], "next": M, "missed": bool}` |
//! | `DELETE /v1/application` | | deletes every executor pod of the application |
//!
//! With a token ([`require_token`], `--api-token-file`), every `/v1/...` request needs
//! `Authorization: Bearer <token>` (401 otherwise); `/live`, `/ready` and `/metrics` stay
//! open.
//!
//! Bad JSON, wrong types, negative or impossible numbers (a total above
//! `spark.dynamicAllocation.maxExecutors`, more than [`MAX_KILL_IDS`] ids) get 400 with
//! `{"error": "<reason>"}`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::Request;
use axum::extract::rejection::QueryRejection;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;

use crate::events::EventLog;
use crate::ids::ExecutorId;
use crate::scheduler::Scheduler;

/// The most ids one kill request may name.
pub const MAX_KILL_IDS: usize = 100_000;

#[derive(Clone)]
struct AppState {
    scheduler: Scheduler,
    metrics: Option<PrometheusHandle>,
    events: EventLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct After {
    #[serde(default)]
    after: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Total {
    total: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kill {
    ids: Vec<ExecutorId>,
}

fn bad(reason: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": reason.to_string() })),
    )
        .into_response()
}

/// The router. `events` is the log that `GET /v1/events` reads (fill it with
/// [`EventLog::fill`] from [`Scheduler::events`]).
pub fn router(scheduler: Scheduler, metrics: Option<PrometheusHandle>, events: EventLog) -> Router {
    Router::new()
        .route("/live", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/v1/executors", get(list))
        .route("/v1/executors/total", put(total))
        .route("/v1/executors/kill", post(kill))
        .route("/v1/executors/{id}/deleted", get(deleted))
        .route("/v1/events", get(events_after))
        .route("/v1/application", delete(stop))
        .with_state(AppState {
            scheduler,
            metrics,
            events,
        })
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `router` with the allocation API (`/v1/...`) behind `Authorization: Bearer <token>`.
pub fn require_token(router: Router, token: String) -> Router {
    let token = Arc::new(token);
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let token = Arc::clone(&token);
            async move {
                let given = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if req.uri().path().starts_with("/v1/")
                    && !same(given.trim().as_bytes(), token.as_bytes())
                {
                    metrics::counter!("kshuffle_scheduler_api_unauthorized_total").increment(1);
                    tracing::warn!(
                        path = req.uri().path(),
                        "API request with a missing or wrong bearer token refused"
                    );
                    return (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({ "error": "missing or wrong bearer token" })),
                    )
                        .into_response();
                }
                next.run(req).await
            }
        },
    ))
}

async fn ready(State(s): State<AppState>) -> Response {
    if s.scheduler.synced() {
        "ready".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "executor pods not listed yet",
        )
            .into_response()
    }
}

async fn render_metrics(State(s): State<AppState>) -> Response {
    match s.metrics {
        Some(h) => h.render().into_response(),
        None => (StatusCode::NOT_FOUND, "no metrics recorder").into_response(),
    }
}

async fn list(State(s): State<AppState>) -> Response {
    Json(json!({
        "counts": s.scheduler.counts(),
        "executors": s.scheduler.executors(),
    }))
    .into_response()
}

async fn total(State(s): State<AppState>, body: Result<Json<Total>, JsonRejection>) -> Response {
    let Json(Total { total }) = match body {
        Ok(b) => b,
        Err(e) => return bad(e.body_text()),
    };
    match s.scheduler.request_total_executors(total) {
        Ok(()) => Json(json!({ "total": total })).into_response(),
        Err(e) => bad(e),
    }
}

async fn kill(State(s): State<AppState>, body: Result<Json<Kill>, JsonRejection>) -> Response {
    let Json(Kill { ids }) = match body {
        Ok(b) => b,
        Err(e) => return bad(e.body_text()),
    };
    if ids.len() > MAX_KILL_IDS {
        return bad(format!(
            "{} ids; at most {MAX_KILL_IDS} per request",
            ids.len()
        ));
    }
    let killed = s.scheduler.kill_executors(&ids).await;
    Json(json!({ "killed": killed })).into_response()
}

async fn deleted(
    State(s): State<AppState>,
    id: Result<Path<ExecutorId>, PathRejection>,
) -> Response {
    match id {
        Ok(Path(id)) => Json(json!({ "deleted": s.scheduler.is_deleted(id) })).into_response(),
        Err(e) => bad(e.body_text()),
    }
}

async fn events_after(
    State(s): State<AppState>,
    q: Result<Query<After>, QueryRejection>,
) -> Response {
    match q {
        Ok(Query(After { after })) => Json(s.events.after(after)).into_response(),
        Err(e) => bad(e.body_text()),
    }
}

async fn stop(State(s): State<AppState>) -> Response {
    match s.scheduler.stop_application().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}
