//! Watches over WebSocket, as the real API server serves them to clients that ask for an
//! upgrade (fabric8, the Kubernetes client inside Spark, does for every watch).
//!
//! The server side of RFC 6455, as much as a watch needs: the handshake (`101 Switching
//! Protocols` with `Sec-WebSocket-Accept`), each watch event sent as one unmasked text
//! message (the same JSON line the HTTP watch streams), pings answered with pongs, and a
//! clean close: when the watch ends the server sends a close frame (1000) and waits briefly
//! for the client's; when the client closes first, the server answers its close frame.
//! No subprotocol is negotiated (the real server's `base64.binary.k8s.io` framing is not
//! offered; a client asking only for it still gets plain text messages).
//!
//! Invariants: nothing the client sends can panic the server or make it allocate more than
//! [`MAX_CLIENT_PAYLOAD`] for one frame; client frames must be masked (an unmasked one ends
//! the connection with 1002, as RFC 6455 section 5.1 requires).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::prelude::{BASE64_STANDARD, Engine as _};
use futures::{Stream, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sha1::{Digest as _, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::status::Error;

/// The GUID RFC 6455 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The largest client frame payload read; larger frames close the connection (1009).
pub const MAX_CLIENT_PAYLOAD: u64 = 1 << 20;
/// How long the server waits for the client's close frame after sending its own.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A request's WebSocket upgrade, if it asked for one: the accept key to answer with and
/// hyper's handle on the connection.
pub struct Upgrade {
    accept: String,
    on_upgrade: OnUpgrade,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade").finish_non_exhaustive()
    }
}

/// Extracts `Some(Upgrade)` when the request asks for a WebSocket, `None` for plain HTTP.
/// A request that asks for a WebSocket but gets the handshake wrong is rejected with 400.
pub struct MaybeUpgrade(pub Option<Upgrade>);

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether the headers ask for a WebSocket upgrade.
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
}

impl<S: Send + Sync> FromRequestParts<S> for MaybeUpgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if !wants_websocket(&parts.headers) {
            return Ok(Self(None));
        }
        let bad = |why: &str| {
            Error::BadRequest(format!("invalid WebSocket handshake: {why}")).into_response()
        };
        if parts.method != axum::http::Method::GET {
            return Err(bad("the method must be GET"));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(bad("missing Connection: Upgrade"));
        }
        let version = parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .and_then(|v| v.to_str().ok());
        if version != Some("13") {
            let mut r = bad("Sec-WebSocket-Version must be 13");
            r.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Err(r);
        }
        let Some(key) = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
        else {
            return Err(bad("missing Sec-WebSocket-Key"));
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(bad("the connection cannot be upgraded"));
        };
        Ok(Self(Some(Upgrade {
            accept: accept_key(key),
            on_upgrade,
        })))
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    BASE64_STANDARD.encode(Sha1::digest(format!("{key}{GUID}").as_bytes()))
}

/// Answers `101 Switching Protocols` and, once hyper hands over the connection, sends every
/// message of `messages` as a text frame, then closes. Ends early when the client closes or
/// the server shuts down.
pub fn serve<M>(upgrade: Upgrade, messages: M, cancel: CancellationToken) -> Response
where
    M: Stream<Item = Bytes> + Send + 'static,
{
    let Upgrade { accept, on_upgrade } = upgrade;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => run(TokioIo::new(upgraded), messages, cancel).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade"),
        }
    });
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// A frame header plus payload, as the server sends it (never masked).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => f.push(n as u8),
        n @ 126..=0xFFFF => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

fn close_frame(code: u16) -> Vec<u8> {
    frame(OP_CLOSE, &code.to_be_bytes())
}

/// What the reader tells the writer.
enum FromClient {
    Ping(Vec<u8>),
    /// The client sent a close frame (with this code, if any).
    Close(Option<u16>),
    /// The client broke the protocol: close with this code.
    Violation(u16),
}

/// A client frame's header and unmasked payload.
struct ClientFrame {
    opcode: u8,
    payload: Vec<u8>,
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<ClientFrame, u16> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await.map_err(|_| 1006u16)?;
    let [b0, b1] = head;
    if b0 & 0x70 != 0 {
        return Err(1002); // reserved bits without a negotiated extension
    }
    let opcode = b0 & 0x0F;
    if b1 & 0x80 == 0 {
        return Err(1002); // client frames must be masked
    }
    let len = match b1 & 0x7F {
        126 => u64::from(r.read_u16().await.map_err(|_| 1006u16)?),
        127 => r.read_u64().await.map_err(|_| 1006u16)?,
        n => u64::from(n),
    };
    let control = opcode & 0x8 != 0;
    if control && (len > 125 || b0 & 0x80 == 0) {
        return Err(1002);
    }
    if len > MAX_CLIENT_PAYLOAD {
        return Err(1009);
    }
    let mut mask = [0u8; 4];
    r.read_exact(&mut mask).await.map_err(|_| 1006u16)?;
    let len = usize::try_from(len).map_err(|_| 1009u16)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|_| 1006u16)?;
    for (b, m) in payload.iter_mut().zip(mask.iter().cycle()) {
        *b ^= m;
    }
    Ok(ClientFrame { opcode, payload })
}

async fn read_loop<R: AsyncRead + Unpin>(mut r: R, tx: mpsc::Sender<FromClient>) {
    loop {
        let msg = match read_frame(&mut r).await {
            Ok(f) => match f.opcode {
                OP_PING => FromClient::Ping(f.payload),
                OP_CLOSE => {
                    let code = match f.payload.as_slice() {
                        [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
                        _ => None,
                    };
                    FromClient::Close(code)
                }
                // Data from the client means nothing to a watch; pongs answer our nothing.
                OP_CONT | OP_TEXT | OP_BINARY | OP_PONG => continue,
                _ => FromClient::Violation(1002),
            },
            Err(1006) => FromClient::Close(None),
            Err(code) => FromClient::Violation(code),
        };
        let last = !matches!(msg, FromClient::Ping(_));
        if tx.send(msg).await.is_err() || last {
            return;
        }
    }
}

async fn run<S, M>(io: S, messages: M, cancel: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    M: Stream<Item = Bytes> + Send + 'static,
{
    let (r, mut w) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel(8);
    let reader = tokio::spawn(read_loop(r, tx));
    let mut messages = std::pin::pin!(messages);
    // Which close to send, and whether the client already sent its own.
    let (code, client_closed) = loop {
        tokio::select! {
            () = cancel.cancelled() => break (1001, false),
            m = messages.next() => match m {
                Some(text) => {
                    if w.write_all(&frame(OP_TEXT, &text)).await.is_err() {
                        reader.abort();
                        return;
                    }
                }
                None => break (1000, false),
            },
            c = rx.recv() => match c {
                Some(FromClient::Ping(p)) => {
                    if w.write_all(&frame(OP_PONG, &p)).await.is_err() {
                        reader.abort();
                        return;
                    }
                }
                // Echo the client's code, as RFC 6455 section 5.5.1 suggests.
                Some(FromClient::Close(c)) => break (c.unwrap_or(1000), true),
                Some(FromClient::Violation(c)) => break (c, true),
                None => break (1000, true),
            },
        }
    };
    let code = match code {
        // Codes that must not be sent in a close frame.
        1005 | 1006 | 1015 => 1000,
        c => c,
    };
    let _ = w.write_all(&close_frame(code)).await;
    let _ = w.flush().await;
    if !client_closed {
        // Wait for the client's close (or the connection to drop), but not forever.
        let wait = async {
            while let Some(m) = rx.recv().await {
                if !matches!(m, FromClient::Ping(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, wait).await;
    }
    let _ = w.shutdown().await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frame_lengths_use_the_shortest_form() {
        assert_eq!(frame(OP_TEXT, b"hi"), vec![0x81, 2, b'h', b'i']);
        let f = frame(OP_TEXT, &[0u8; 200]);
        assert_eq!(&f[..4], &[0x81, 126, 0, 200]);
        let f = frame(OP_BINARY, &[0u8; 70_000]);
        assert_eq!(&f[..2], &[0x82, 127]);
        assert_eq!(&f[2..10], &70_000u64.to_be_bytes());
    }
}
