//! The accept loop. During an [`Outage::Refuse`] the listening socket is closed (clients get
//! "connection refused") and every open connection is cut; afterwards the same port is bound
//! again.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::{Outage, Shared};

fn refusing(rx: &watch::Receiver<Option<Outage>>) -> bool {
    matches!(*rx.borrow(), Some(Outage::Refuse))
}

/// Serves until the shared token is cancelled.
pub async fn serve(listener: TcpListener, app: Router, shared: Arc<Shared>, tasks: TaskTracker) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let mut listener = Some(listener);
    let mut outage = shared.outage.subscribe();
    loop {
        outage.borrow_and_update();
        if refusing(&outage) {
            listener = None;
            tokio::select! {
                () = shared.cancel.cancelled() => return,
                r = outage.changed() => if r.is_err() { return },
            }
            continue;
        }
        let l = match listener.as_mut() {
            Some(l) => l,
            None => match TcpListener::bind(addr).await {
                Ok(l) => listener.insert(l),
                Err(e) => {
                    tracing::debug!(error = %e, "rebinding the fake API port");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            () = shared.cancel.cancelled() => return,
            r = outage.changed() => if r.is_err() { return },
            r = l.accept() => match r {
                Ok((stream, _)) => {
                    tasks.spawn(connection(stream, app.clone(), Arc::clone(&shared)));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
        }
    }
}

async fn connection(stream: TcpStream, app: Router, shared: Arc<Shared>) {
    let svc = TowerToHyperService::new(app);
    // With upgrades, so watches can switch to WebSocket (see `websocket.rs`).
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    let mut outage = shared.outage.subscribe();
    let cut = async {
        loop {
            if refusing(&outage) {
                return;
            }
            if outage.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        r = conn => if let Err(e) = r { tracing::trace!(error = %e, "connection") },
        () = shared.cancel.cancelled() => {}
        () = cut => {}
    }
}
