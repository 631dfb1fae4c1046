//! One call of one mutating webhook, as the API server makes it: HTTPS (rustls with ring)
//! verified against the webhook's `caBundle` only, HTTP/1.1 `POST` of an `AdmissionReview`
//! v1 to the configured path with `?timeout=Ns` appended, the whole call bounded by
//! `timeoutSeconds`, and the answer checked as `VerifyAdmissionResponse` checks it.
//!
//! Errors are strings worded as the real server's (`Post "https://…": context deadline
//! exceeded`, `received invalid webhook response: …`); the dispatcher wraps them in
//! `failed calling webhook "<name>": …` and applies the failure policy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The largest webhook answer read (the real server's limit on response bodies is larger;
/// a pod patch is a few KiB).
const MAX_RESPONSE_BYTES: usize = 3 << 20;

/// Where a webhook is called.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as the real server logs it (`https://svc.ns.svc:443/mutate?timeout=5s`).
    pub url: String,
    /// The TLS server name checked against the certificate.
    pub host: String,
    /// Path and query sent.
    pub path_and_query: String,
    /// The address connected to; `Err` says why there is none (e.g. an unmapped Service).
    pub addr: Result<SocketAddr, String>,
}

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The webhook could not be reached or did not answer usably (subject to the failure
    /// policy): `failed to call webhook: …` or `received invalid webhook response: …`.
    Calling(String),
}

fn tls(ca_bundle: &[u8]) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle) {
        let cert = cert.map_err(|e| format!("invalid caBundle: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("invalid caBundle: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn post(target: &Target, ca_bundle: &[u8], body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    let addr = target.addr.clone()?;
    let connector = tls(ca_bundle)?;
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| format!("invalid host {:?}: {e}", target.host))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: connect: {e}"))?;
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: failed to verify certificate: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // The connection task is aborted when this call ends, also when the timeout around it
    // drops this future: a webhook that never answers holds no task.
    let _driver = AbortOnDrop(tokio::spawn(conn));
    let req = Request::post(&target.path_and_query)
        .header(header::HOST, &target.host)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, */*")
        .body(Body::from(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| format!("reading the response: {e}"))?;
    Ok((status, bytes.to_vec()))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// POSTs `review` and returns the verified `response` of the answer.
///
/// # Errors
/// [`CallError::Calling`] for any failure to reach the webhook within `timeout`, a non-2xx
/// answer, an answer that is not an `AdmissionReview` v1, or a `uid` that does not match.
pub async fn call(
    target: &Target,
    ca_bundle: &[u8],
    review: &Value,
    uid: &str,
    timeout: Duration,
) -> Result<Value, CallError> {
    let body = serde_json::to_vec(review).map_err(|e| CallError::Calling(e.to_string()))?;
    let failed = |e: String| {
        CallError::Calling(format!(
            "failed to call webhook: Post \"{}\": {e}",
            target.url
        ))
    };
    let (status, bytes) = match tokio::time::timeout(timeout, post(target, ca_bundle, body)).await {
        Err(_) => return Err(failed("context deadline exceeded".into())),
        Ok(Err(e)) => return Err(failed(e)),
        Ok(Ok(answer)) => answer,
    };
    if !(200..300).contains(&status) {
        return Err(CallError::Calling(format!(
            "failed to call webhook: the server responded with the status code {status} but did not return more information"
        )));
    }
    let invalid = |e: String| CallError::Calling(format!("received invalid webhook response: {e}"));
    let answer: Value = serde_json::from_slice(&bytes).map_err(|e| {
        CallError::Calling(format!(
            "failed to call webhook: unable to decode the response: {e}"
        ))
    })?;
    if answer.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || answer.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err(invalid(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {}, Kind={}",
            answer
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or(""),
            answer.get("kind").and_then(Value::as_str).unwrap_or("")
        )));
    }
    let Some(response) = answer.get("response").filter(|r| r.is_object()) else {
        return Err(invalid("response was absent".into()));
    };
    let got = response.get("uid").and_then(Value::as_str).unwrap_or("");
    if got != uid {
        return Err(invalid(format!(
            "expected response.uid={uid:?}, got {got:?}"
        )));
    }
    let patch = response.get("patch").and_then(Value::as_str).unwrap_or("");
    let patch_type = response.get("patchType").and_then(Value::as_str);
    match (patch.is_empty(), patch_type) {
        (true, None) | (false, Some("JSONPatch")) => {}
        (true, Some(t)) => {
            return Err(invalid(format!(
                "expected patchType to be unset when patch is empty, got {t:?}"
            )));
        }
        (false, None) => {
            return Err(invalid(
                "webhook returned response.patch but not response.patchType".into(),
            ));
        }
        (false, Some(t)) => {
            return Err(invalid(format!(
                "expected patchType \"JSONPatch\", got {t:?}"
            )));
        }
    }
    Ok(response.clone())
}
