//! The admin HTTP port: health, readiness, Prometheus metrics, and the application
//! lifecycle API that drivers, operators and batch schedulers call.
//!
//! | method and path | auth | what |
//! |---|---|---|
//! | `GET /healthz` | – | 200 while the process serves |
//! | `GET /readyz` | – | 200 once the registry is loaded and the shuffle port is bound; 503 during shutdown |
//! | `GET /metrics` | – | Prometheus text |
//! | `GET /v1/apps` | bearer | registered apps and their executors (JSON) |
//! | `DELETE /v1/apps/{appId}` | bearer | driver terminated: drop the app's registrations and delete its files |
//! | `DELETE /v1/apps/{appId}/executors/{execId}` | bearer | executor gone: delete its non-shuffle files |
//! | `POST /v1/sweep?dryRun=true` | bearer | run the orphan sweep now |
//!
//! The bearer token is read from a file at start (`--admin-token-file`, e.g. a mounted
//! Kubernetes Secret). Without one, the `/v1` endpoints answer 403: the lifecycle API is
//! never open by accident. A wrong or missing token gets 401 and changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::handler::Service;
use crate::store::SweepOptions;

/// What the admin endpoints need.
#[derive(Clone)]
pub struct AdminState {
    service: Arc<Service>,
    token: Option<Arc<str>>,
    ready: Arc<AtomicBool>,
    prometheus: Option<PrometheusHandle>,
    sweep: SweepOptions,
    keep_rdd: bool,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// State over `service`. `token`: the bearer token (`None` disables `/v1`);
    /// `prometheus`: the handle of the installed recorder (`None`: `/metrics` is 404).
    pub fn new(
        service: Arc<Service>,
        token: Option<String>,
        prometheus: Option<PrometheusHandle>,
        sweep: SweepOptions,
        keep_rdd: bool,
    ) -> Self {
        Self {
            service,
            token: token.map(Arc::from),
            ready: Arc::new(AtomicBool::new(false)),
            prometheus,
            sweep,
            keep_rdd,
        }
    }

    /// The readiness flag (`/readyz`).
    pub fn ready(&self) -> &Arc<AtomicBool> {
        &self.ready
    }
}

/// The router (for tests to call in-process, and for [`serve`]).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{app_id}", delete(remove_app))
        .route(
            "/v1/apps/{app_id}/executors/{exec_id}",
            delete(executor_gone),
        )
        .route("/v1/sweep", post(sweep))
        .with_state(state)
}

/// Serves the admin API on `listener` until `shutdown`.
///
/// # Errors
/// When the HTTP server fails.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Err` carries the refusal to send (401 or 403).
#[allow(clippy::result_large_err)]
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = &state.token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "the admin API is disabled: start kshuffled with --admin-token-file",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.trim().as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        metrics::counter!("kshuffle_admin_unauthorized_total").increment(1);
        warn!("admin request with a missing or wrong bearer token refused");
        Err(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ))
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    let Some(handle) = &state.prometheus else {
        return error(StatusCode::NOT_FOUND, "no metrics recorder installed");
    };
    crate::metrics::publish(&state.service);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecutorView {
    exec_id: String,
    local_dirs: Vec<String>,
    sub_dirs_per_local_dir: u32,
    shuffle_manager: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AppView {
    app_id: String,
    executors: Vec<ExecutorView>,
}

async fn list_apps(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let registry = state.service.store.registry();
    let mut apps: Vec<AppView> = registry
        .apps()
        .into_iter()
        .map(|app| {
            let mut executors: Vec<ExecutorView> = registry
                .executors_of(&app.0)
                .iter()
                .map(|e| ExecutorView {
                    exec_id: e.exec_id.0.clone(),
                    local_dirs: e.local_dirs.clone(),
                    sub_dirs_per_local_dir: e.sub_dirs_per_local_dir,
                    shuffle_manager: e.shuffle_manager.clone(),
                })
                .collect();
            executors.sort_by(|a, b| a.exec_id.cmp(&b.exec_id));
            AppView {
                app_id: app.0,
                executors,
            }
        })
        .collect();
    apps.sort_by(|a, b| a.app_id.cmp(&b.app_id));
    Json(apps).into_response()
}

async fn remove_app(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let service = Arc::clone(&state.service);
    let app = app_id.clone();
    match tokio::task::spawn_blocking(move || service.store.remove_app(&app)).await {
        Ok(Ok(Some(removal))) => {
            info!(app = %app_id, "application removed through the admin API");
            Json(removal).into_response()
        }
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            format!("unknown application {app_id}"),
        ),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("removal task failed: {e}"),
        ),
    }
}

async fn executor_gone(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path((app_id, exec_id)): Path<(String, String)>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let service = Arc::clone(&state.service);
    let keep_rdd = state.keep_rdd;
    match tokio::task::spawn_blocking(move || {
        service.store.executor_gone(&app_id, &exec_id, keep_rdd)
    })
    .await
    {
        Ok(Ok(reclaimed)) => Json(reclaimed).into_response(),
        Ok(Err(e @ crate::store::Error::UnknownExecutor { .. })) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cleanup task failed: {e}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SweepQuery {
    dry_run: Option<bool>,
}

async fn sweep(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(query): Query<SweepQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let service = Arc::clone(&state.service);
    let mut options = state.sweep.clone();
    options.dry_run = query.dry_run.unwrap_or(options.dry_run);
    match tokio::task::spawn_blocking(move || {
        service.store.sweep(&options, std::time::SystemTime::now())
    })
    .await
    {
        Ok(report) => Json(report).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("sweep task failed: {e}"),
        ),
    }
}
