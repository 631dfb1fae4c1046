//! The webhook over real HTTPS on 127.0.0.1: a test CA issues the serving certificate, a
//! rustls client that trusts only that CA talks HTTP/1.1 to it, as the API server would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use kshuffle_sidecar::inject::Config;
use kshuffle_sidecar::webhook::{self, Settings, tls::CertStore};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

mod common;

use common::WebhookProcess;

const REVIEW: &str = include_str!("fixtures/executor-review.json");

/// A CA, and a server certificate for localhost/127.0.0.1 that it signed.
struct Pki {
    ca_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, name);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_der: ca_cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn write(dir: &Path, pki: &Pki) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    (cert, key)
}

struct Webhook {
    addr: SocketAddr,
    certs: Arc<CertStore>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(dir: &Path, pki: &Pki, settings: Settings) -> Webhook {
    let (cert, key) = write(dir, pki);
    let certs = Arc::new(CertStore::load(&cert, &key).unwrap());
    let tls = Arc::new(webhook::tls::server_config(&certs).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = Config {
        image: "img:1".to_owned(),
        ..Config::default()
    };
    let task = tokio::spawn(webhook::serve(
        listener,
        tls,
        config,
        settings,
        stop.clone(),
    ));
    Webhook {
        addr,
        certs,
        stop,
        task,
    }
}

fn connector(ca: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// One HTTPS request on a new connection; (status, content type, body).
async fn request(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    req: Request<Full<Bytes>>,
) -> std::io::Result<(u16, String, Bytes)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector(ca).connect(name, tcp).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let response = sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, content_type, body))
}

fn post(path: &str, content_type: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "localhost")
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Hang guard: every await that could hang is bounded (asserts nothing about durations).
async fn guard<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("hung")
}

#[tokio::test]
async fn mutate_over_https_with_a_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki("test CA");
    let hook = start(dir.path(), &ca, Settings::default()).await;

    let (status, content_type, body) = guard(request(
        hook.addr,
        &ca.ca_der,
        post("/mutate", "application/json", REVIEW),
    ))
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let review: Value = serde_json::from_str(REVIEW).unwrap();
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    assert!(
        answer["response"]["patch"]
            .as_str()
            .is_some_and(|p| !p.is_empty())
    );

    for path in ["/healthz", "/readyz"] {
        let (status, _, _) = guard(request(hook.addr, &ca.ca_der, get(path)))
            .await
            .unwrap();
        assert_eq!(status, 200, "{path}");
    }

    // A client that does not trust the CA cannot talk to it.
    let other = pki("another CA");
    assert!(
        guard(request(hook.addr, &other.ca_der, get("/healthz")))
            .await
            .is_err()
    );

    hook.stop.cancel();
    guard(hook.task).await.unwrap().unwrap();
    assert!(
        TcpStream::connect(hook.addr).await.is_err(),
        "stopped accepting"
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki("test CA");
    let settings = Settings {
        max_body_bytes: 64 * 1024,
        ..Settings::default()
    };
    let hook = start(dir.path(), &ca, settings).await;
    let cases = [
        (
            post("/mutate", "application/json", "{not json"),
            400,
            "not an AdmissionReview",
        ),
        (
            post(
                "/mutate",
                "application/json",
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            ),
            400,
            "no request",
        ),
        (
            post("/mutate", "text/plain", REVIEW),
            415,
            "application/json",
        ),
        (
            post("/mutate", "application/json", vec![b' '; 100 * 1024]),
            413,
            "larger than 65536 bytes",
        ),
        (get("/mutate"), 405, ""),
        (get("/nope"), 404, ""),
    ];
    for (req, want, message) in cases {
        let (status, _, body) = guard(request(hook.addr, &ca.ca_der, req)).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, want, "{text}");
        assert!(
            text.contains(message),
            "{text:?} should contain {message:?}"
        );
    }
    // Still serving.
    let (status, _, _) = guard(request(
        hook.addr,
        &ca.ca_der,
        post("/mutate", "application/json", REVIEW),
    ))
    .await
    .unwrap();
    assert_eq!(status, 200);
    hook.stop.cancel();
    guard(hook.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = pki("first CA");
    let hook = start(dir.path(), &first, Settings::default()).await;
    let reloader = tokio::spawn(
        Arc::clone(&hook.certs).reload_periodically(Duration::from_millis(50), hook.stop.clone()),
    );
    guard(request(hook.addr, &first.ca_der, get("/healthz")))
        .await
        .unwrap();

    // A half-written Secret (garbage) keeps the old certificate.
    std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
    assert!(hook.certs.reload().is_err());
    guard(request(hook.addr, &first.ca_der, get("/healthz")))
        .await
        .unwrap();

    // The renewed pair is picked up by the periodic reload.
    let second = pki("second CA");
    write(dir.path(), &second);
    guard(async {
        while request(hook.addr, &second.ca_der, get("/healthz"))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        guard(request(hook.addr, &first.ca_der, get("/healthz")))
            .await
            .is_err(),
        "old CA no longer matches"
    );
    hook.stop.cancel();
    guard(hook.task).await.unwrap().unwrap();
    guard(reloader).await.unwrap();
}

#[test]
fn unusable_certificate_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let a = pki("a");
    let b = pki("b");
    let (cert, key) = write(dir.path(), &a);
    let missing = CertStore::load(&dir.path().join("nope.crt"), &key).unwrap_err();
    assert!(missing.to_string().contains("nope.crt"), "{missing}");
    std::fs::write(dir.path().join("empty.crt"), "").unwrap();
    let empty = CertStore::load(&dir.path().join("empty.crt"), &key).unwrap_err();
    assert!(
        empty.to_string().contains("no usable PEM certificate"),
        "{empty}"
    );
    std::fs::write(dir.path().join("other.key"), &b.key_pem).unwrap();
    let mismatch = CertStore::load(&cert, &dir.path().join("other.key")).unwrap_err();
    assert!(
        mismatch.to_string().contains("does not match"),
        "{mismatch}"
    );
}

/// The `webhook` subcommand as a process: loads the files, serves HTTPS on its port, and on
/// SIGTERM stops accepting and exits 0.
#[tokio::test]
async fn the_binary_serves_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki("test CA");
    let (cert, key) = write(dir.path(), &ca);
    let mut webhook =
        WebhookProcess::spawn(&cert, &key, &["--image", "img:1", "--log-format", "json"]);
    let addr = webhook.addr;
    let (status, _, body) = guard(request(
        addr,
        &ca.ca_der,
        post("/mutate", "application/json", REVIEW),
    ))
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("JSONPatch"));

    webhook.signal("-TERM");
    webhook.wait_line("webhook stopped");
    let status = webhook.wait_exit().await;
    assert!(status.success(), "{status:?}");
}
