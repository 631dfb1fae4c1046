//! A log of the requests the fake API server received, so tests can assert what a client
//! (Spark's own, for one) sent: method, path, query, whether it asked for a WebSocket, its
//! `User-Agent`, and the status answered. Bodies are not kept: the objects they created are
//! in the store.
//!
//! Invariant: the log keeps the last [`MAX_RECORDS`] requests, so a long test cannot grow it
//! without bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::Shared;
use super::websocket::wants_websocket;

/// How many requests the log keeps.
pub const MAX_RECORDS: usize = 10_000;

/// One request, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The request's number, from 1, in the order responses were sent.
    pub seq: u64,
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, e.g. `/api/v1/namespaces/default/pods`.
    pub path: String,
    /// The raw query string (percent-encoded), empty if none.
    pub query: String,
    /// Whether the request asked for a WebSocket upgrade.
    pub websocket: bool,
    /// The `User-Agent` header, empty if none.
    pub user_agent: String,
    /// The status answered (101 for an accepted WebSocket).
    pub status: u16,
}

impl Record {
    /// The value of one query parameter, percent-decoded (`+` is a space, as in forms).
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| {
            bytes
                .get(j)
                .and_then(|c| char::from(*c).to_digit(16))
                .and_then(|d| u8::try_from(d).ok())
        };
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The shared log, and how many requests were ever recorded.
#[derive(Debug, Default)]
pub struct Log(Mutex<(VecDeque<Record>, u64)>);

impl Log {
    fn push(&self, mut r: Record) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (log, count) = &mut *guard;
        *count += 1;
        r.seq = *count;
        if log.len() >= MAX_RECORDS {
            log.pop_front();
        }
        log.push_back(r);
    }

    /// Every kept record, oldest first.
    pub fn records(&self) -> Vec<Record> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .iter()
            .cloned()
            .collect()
    }
}

/// The middleware: records each request with the status it was answered.
pub async fn record(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let websocket = wants_websocket(req.headers());
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let resp = next.run(req).await;
    shared.requests.push(Record {
        seq: 0,
        method,
        path,
        query,
        websocket,
        user_agent,
        status: resp.status().as_u16(),
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_percent_decoded() {
        let r = Record {
            seq: 1,
            method: "GET".into(),
            path: "/api/v1/namespaces/default/pods".into(),
            query: "labelSelector=spark-role%3Dexecutor%2Cspark-exec-inactive%21%3Dtrue&watch=true&x=a+b&bad=%zz".into(),
            websocket: false,
            user_agent: String::new(),
            status: 200,
        };
        assert_eq!(
            r.param("labelSelector").as_deref(),
            Some("spark-role=executor,spark-exec-inactive!=true")
        );
        assert_eq!(r.param("watch").as_deref(), Some("true"));
        assert_eq!(r.param("x").as_deref(), Some("a b"));
        assert_eq!(r.param("bad").as_deref(), Some("%zz"));
        assert_eq!(r.param("missing"), None);
    }
}
