//! Pod watches over WebSocket, as fabric8 (Spark's Kubernetes client) opens them: pinned
//! with a raw RFC 6455 client over TCP, since `kube` only watches over plain HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kshuffle_testkit::apiserver::FakeApiServer;
use kshuffle_testkit::kube_client;
use kube::api::{Api, PostParams};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NS: &str = "spark";
/// The key of RFC 6455 section 1.3 and the accept value it must produce.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(60), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

fn pod(name: &str, role: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.labels = Some(
        [
            ("spark-app-selector".to_owned(), "spark-1".to_owned()),
            ("spark-role".to_owned(), role.to_owned()),
        ]
        .into(),
    );
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: "spark-kubernetes-executor".into(),
            image: Some("kshuffle/spark-test".into()),
            ..Container::default()
        }],
        ..PodSpec::default()
    });
    p
}

/// Sends an upgrade request; returns the stream positioned after the response head, and
/// the head.
async fn handshake(server: &FakeApiServer, path: &str, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    (s, String::from_utf8(head).unwrap())
}

const V13: &str = "Sec-WebSocket-Version: 13\r\n";

/// Reads one server frame: (FIN, opcode, payload). Server frames must not be masked.
async fn read_frame(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let b0 = s.read_u8().await.unwrap();
    let b1 = s.read_u8().await.unwrap();
    assert_eq!(b1 & 0x80, 0, "server frames are not masked");
    let len = match b1 & 0x7F {
        126 => u64::from(s.read_u16().await.unwrap()),
        127 => s.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut payload = vec![0; usize::try_from(len).unwrap()];
    s.read_exact(&mut payload).await.unwrap();
    (b0 & 0x80 != 0, b0 & 0x0F, payload)
}

/// Writes one client frame, masked (or not, to test the server's refusal).
async fn write_frame(s: &mut TcpStream, opcode: u8, payload: &[u8], masked: bool) {
    let mut f = vec![0x80 | opcode];
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let m = if masked { 0x80 } else { 0 };
    f.push(m | u8::try_from(payload.len()).unwrap());
    if masked {
        f.extend_from_slice(&mask);
        f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
    } else {
        f.extend_from_slice(payload);
    }
    s.write_all(&f).await.unwrap();
}

async fn next_event(s: &mut TcpStream) -> Value {
    let (fin, op, payload) = read_frame(s).await;
    assert!(fin, "each event is one unfragmented message");
    assert_eq!(op, 0x1, "events are text messages");
    serde_json::from_slice(&payload).unwrap()
}

fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

#[tokio::test]
async fn a_watch_upgraded_to_websocket_sends_each_event_as_a_text_message() {
    let server = FakeApiServer::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube_client(&server, NS).unwrap(), NS);
    // The query Spark 4.3 sends for its executor watch.
    let path = "/api/v1/namespaces/spark/pods?allowWatchBookmarks=true&labelSelector=spark-app-selector%3Dspark-1%2Cspark-role%3Dexecutor%2Cspark-exec-inactive%21%3Dtrue&watch=true";
    let (mut s, head) = handshake(&server, path, V13).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("connection: upgrade\r\n"), "{head}");
    assert!(
        head.contains(&format!("sec-websocket-accept: {ACCEPT}\r\n")),
        "{head}"
    );

    // A driver pod does not match the selector; the executor does.
    let pp = PostParams::default();
    pods.create(&pp, &pod("driver", "driver")).await.unwrap();
    pods.create(&pp, &pod("exec-1", "executor")).await.unwrap();
    let ev = within("the ADDED event", next_event(&mut s)).await;
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["metadata"]["name"], "exec-1");
    assert_eq!(ev["object"]["kind"], "Pod");

    // The simulated kubelet moves it on; every change arrives as its own message, until
    // the pod is Running.
    loop {
        let ev = within("MODIFIED events", next_event(&mut s)).await;
        if ev["type"] == "BOOKMARK" {
            continue;
        }
        assert_eq!(ev["type"], "MODIFIED");
        assert_eq!(ev["object"]["metadata"]["name"], "exec-1");
        if ev["object"]["status"]["phase"] == "Running" {
            break;
        }
    }

    // A ping is answered with a pong carrying the same payload.
    write_frame(&mut s, 0x9, b"are you there", true).await;
    loop {
        let (_, op, payload) = within("the pong", read_frame(&mut s)).await;
        if op == 0x1 {
            continue; // a bookmark may come first
        }
        assert_eq!(op, 0xA);
        assert_eq!(payload, b"are you there");
        break;
    }

    // The client closes: the server echoes the close and ends the connection.
    write_frame(&mut s, 0x8, &1000u16.to_be_bytes(), true).await;
    loop {
        let (_, op, payload) = within("the close", read_frame(&mut s)).await;
        if op == 0x1 {
            continue;
        }
        assert_eq!(op, 0x8);
        assert_eq!(close_code(&payload), 1000);
        break;
    }
    let mut rest = Vec::new();
    within("EOF", s.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "nothing after the close frame");
    let rec = server.requests().into_iter().find(|r| r.websocket).unwrap();
    assert_eq!(rec.status, 101);
    assert_eq!(
        rec.param("labelSelector").as_deref(),
        Some("spark-app-selector=spark-1,spark-role=executor,spark-exec-inactive!=true")
    );
}

#[tokio::test]
async fn a_watch_that_ends_closes_with_1000() {
    let server = FakeApiServer::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube_client(&server, NS).unwrap(), NS);
    pods.create(&PostParams::default(), &pod("exec-1", "executor"))
        .await
        .unwrap();
    let (mut s, head) = handshake(
        &server,
        "/api/v1/namespaces/spark/pods?watch=true&timeoutSeconds=1",
        V13,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Without a resourceVersion the watch starts with the existing pods.
    let ev = within("the initial ADDED", next_event(&mut s)).await;
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["metadata"]["name"], "exec-1");
    let code = loop {
        let (_, op, payload) = within("the close", read_frame(&mut s)).await;
        if op == 0x8 {
            break close_code(&payload);
        }
    };
    assert_eq!(code, 1000);
    write_frame(&mut s, 0x8, &1000u16.to_be_bytes(), true).await;
    let mut rest = Vec::new();
    within("EOF", s.read_to_end(&mut rest)).await.unwrap();
}

#[tokio::test]
async fn a_too_old_version_is_an_error_message_then_a_close() {
    let server = FakeApiServer::builder()
        .history_limit(2)
        .start()
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(kube_client(&server, NS).unwrap(), NS);
    for i in 0..4 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), "executor"))
            .await
            .unwrap();
    }
    let (mut s, head) = handshake(
        &server,
        "/api/v1/namespaces/spark/pods?watch=true&resourceVersion=1",
        V13,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let ev = within("the ERROR event", next_event(&mut s)).await;
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    let (_, op, payload) = within("the close", read_frame(&mut s)).await;
    assert_eq!(op, 0x8);
    assert_eq!(close_code(&payload), 1000);
}

#[tokio::test]
async fn bad_handshakes_and_unmasked_frames_are_refused() {
    let server = FakeApiServer::start().await.unwrap();
    let watch = "/api/v1/namespaces/spark/pods?watch=true";

    // Another protocol version: 400, naming the one supported.
    let (_, head) = handshake(&server, watch, "Sec-WebSocket-Version: 8\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13\r\n"),
        "{head}"
    );

    // A WebSocket is only served for watches.
    let (_, head) = handshake(&server, "/api/v1/namespaces/spark/pods", V13).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    // A bad selector is refused before the upgrade, as a plain 400.
    let (_, head) = handshake(&server, &format!("{watch}&labelSelector=a%20b"), V13).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    // An unmasked client frame is a protocol error: close 1002.
    let (mut s, head) = handshake(&server, watch, V13).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    write_frame(&mut s, 0x1, b"hello", false).await;
    let (_, op, payload) = within("the close", read_frame(&mut s)).await;
    assert_eq!(op, 0x8);
    assert_eq!(close_code(&payload), 1002);
    let mut rest = Vec::new();
    within("EOF", s.read_to_end(&mut rest)).await.unwrap();

    // The server is still serving.
    let pods: Api<Pod> = Api::namespaced(kube_client(&server, NS).unwrap(), NS);
    pods.list(&Default::default()).await.unwrap();
}
