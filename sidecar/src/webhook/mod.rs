//! The webhook's HTTPS server: `POST /mutate` (an `AdmissionReview` in, one out), `GET /healthz`
//! and `GET /readyz`, over TLS from [`tls::CertStore`].
//!
//! The HTTP layer only reads the body (bounded in size and time), calls
//! [`admission::review`], logs the verdict once, and answers. Limits: at most
//! [`Settings::max_connections`] connections (more are closed at once), a TLS handshake and a
//! request header must arrive within [`Settings::request_timeout`], and a body within it too.
//! Shutdown: stop accepting, mark `/readyz` unready, let open connections finish their request
//! (up to [`Settings::shutdown_grace`]), then return.

pub mod args;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use self::args::WebhookArgs;
use crate::admission::{self, Verdict};
use crate::inject::{Config, Decision};

/// Limits and timeouts of the server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest accepted request body. The API server sends the whole pod (and, on updates, the
    /// old one): a few hundred KiB at most in practice; etcd caps objects at 1.5 MiB.
    pub max_body_bytes: usize,
    /// Deadline for the TLS handshake, for the request header, and for the request body.
    pub request_timeout: Duration,
    /// At most this many open connections; more are closed at once.
    pub max_connections: usize,
    /// On shutdown, how long open connections may finish.
    pub shutdown_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Shared by the handlers.
#[derive(Debug)]
struct AppState {
    config: Config,
    settings: Settings,
    ready: AtomicBool,
}

/// The webhook's routes, for tests in-process and for [`serve`].
pub fn router(config: Config, settings: Settings) -> Router {
    router_with_state(Arc::new(AppState {
        config,
        settings,
        ready: AtomicBool::new(true),
    }))
}

fn router_with_state(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    }
}

async fn mutate(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let max = state.settings.max_body_bytes;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected Content-Type application/json, got {content_type:?}"),
        );
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {max} bytes"),
        );
    }
    let bytes = match tokio::time::timeout(
        state.settings.request_timeout,
        axum::body::to_bytes(body, max),
    )
    .await
    {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time".to_owned(),
            );
        }
        Ok(Err(e)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body unreadable or larger than {max} bytes: {e}"),
            );
        }
        Ok(Ok(bytes)) => bytes,
    };
    match admission::review(&bytes, &state.config) {
        Ok(reviewed) => {
            log_verdict(&reviewed.pod, &reviewed.verdict);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                reviewed.body,
            )
                .into_response()
        }
        Err(e) => {
            warn!(kind = e.kind(), error = %e, "bad admission review");
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

fn log_verdict(pod: &str, verdict: &Verdict) {
    match verdict {
        Verdict::Decided(Decision::Inject(_)) => info!(pod, "sidecar injected"),
        Verdict::Decided(Decision::Skip(reason)) => debug!(pod, %reason, "admitted unchanged"),
        Verdict::Decided(Decision::Unsafe(reason)) => {
            warn!(pod, kind = reason.kind(), %reason, "cannot inject safely; admitted unchanged");
        }
        Verdict::NotAPod(reason) => warn!(pod, %reason, "not a pod CREATE; admitted unchanged"),
    }
}

/// Serves HTTPS on `listener` until `shutdown`, then drains (see the module docs).
///
/// # Errors
/// Only when the listener itself fails persistently is nothing returned early: accept errors
/// are logged and retried after a pause, so this returns `Ok` after shutdown.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: Config,
    settings: Settings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(AppState {
        config,
        settings: settings.clone(),
        ready: AtomicBool::new(true),
    });
    let app = router_with_state(Arc::clone(&state));
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let tasks = TaskTracker::new();
    info!(addr = %listener.local_addr()?, "webhook listening");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            warn!(%peer, "too many connections; closing");
            continue;
        };
        let (acceptor, app, stop) = (acceptor.clone(), app.clone(), shutdown.clone());
        let timeout = settings.request_timeout;
        tasks.spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(timeout);
            let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    state.ready.store(false, Ordering::Relaxed);
    tasks.close();
    if tokio::time::timeout(settings.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        warn!(
            open = tasks.len(),
            "shutdown grace elapsed; closing open connections"
        );
    }
    info!("webhook stopped");
    Ok(())
}
