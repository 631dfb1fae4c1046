//! The authenticating client against a minimal server built on the pure [`ServerAuth`]: it
//! runs the handshake, then echoes every `RpcRequest` through its own transport cipher. A
//! client that did not encrypt (or used another key or cipher) would make the server decode
//! garbage, so an echo that round-trips proves both directions are sealed and opened alike.

use std::sync::Arc;

use tokio::net::TcpListener;

use super::*;
use crate::auth::{AuthStep, ServerAuth, StaticSecrets};

const APP: &str = "app-1";
const SECRET: &str = "the-secret";

/// How the test server answers the handshake.
#[derive(Clone, Copy)]
enum Script {
    /// Runs [`ServerAuth`] with `APP`'s secret, then echoes RPCs through the cipher.
    Honest {
        version: AuthEngineVersion,
        cipher: CipherMode,
    },
    /// Answers the challenge with bytes that are no AuthEngine response.
    Garbage,
    /// Accepts and never answers.
    Silent,
}

/// Serves one connection by `script`; returns the address.
async fn serve(script: Script) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let (version, cipher) = match script {
            Script::Honest { version, cipher } => (version, cipher),
            Script::Garbage => (AuthEngineVersion::V1, CipherMode::Ctr),
            Script::Silent => {
                // Hold the connection open without a reply until the client gives up.
                let mut sink = Vec::new();
                let _ = socket.read_to_end(&mut sink).await;
                return;
            }
        };
        let secrets = StaticSecrets::per_app(Default::default()).with_app(APP, SECRET.into());
        let mut auth = ServerAuth::new(Arc::new(secrets), version, false).with_cipher(cipher);
        let mut plain = BytesMut::new();
        let mut sealed = BytesMut::new();
        let mut transport: Option<TransportCipher> = None;
        loop {
            while let Some(frame) = wire::decode(&mut plain, MAX_REPLY_FRAME_BYTES).unwrap() {
                let Frame::RpcRequest { request_id, body } = frame else {
                    panic!("not an RPC: {frame:?}");
                };
                let mut out = BytesMut::new();
                match &mut transport {
                    None if matches!(script, Script::Garbage) => {
                        let body = Bytes::from_static(b"\xFBnot an auth message");
                        wire::encode(&Frame::RpcResponse { request_id, body }, &mut out);
                    }
                    None => match auth.step(&body, &mut auth::fill_random) {
                        Ok(AuthStep::Done {
                            reply,
                            transport: t,
                            ..
                        }) => {
                            let body = reply;
                            wire::encode(&Frame::RpcResponse { request_id, body }, &mut out);
                            transport = t;
                        }
                        Ok(AuthStep::Continue(_)) => panic!("AuthEngine takes one round"),
                        Err(e) => {
                            let error = e.to_string();
                            wire::encode(&Frame::RpcFailure { request_id, error }, &mut out);
                            socket.write_all(&out).await.unwrap();
                            return;
                        }
                    },
                    Some(cipher) => {
                        let mut echo = BytesMut::new();
                        wire::encode(&Frame::RpcResponse { request_id, body }, &mut echo);
                        cipher
                            .seal(&echo, &mut auth::fill_random, &mut out)
                            .unwrap();
                    }
                }
                socket.write_all(&out).await.unwrap();
            }
            let into = if transport.is_some() {
                &mut sealed
            } else {
                &mut plain
            };
            if socket.read_buf(into).await.unwrap() == 0 {
                return;
            }
            if let Some(cipher) = &mut transport {
                cipher.open(&mut sealed, &mut plain).unwrap();
            }
        }
    });
    addr
}

#[tokio::test]
async fn authenticates_then_every_byte_goes_through_the_negotiated_cipher() {
    for version in [AuthEngineVersion::V1, AuthEngineVersion::V2] {
        for cipher in [CipherMode::Ctr, CipherMode::Gcm] {
            let addr = serve(Script::Honest { version, cipher }).await;
            let credentials = Credentials::new(APP, SECRET.into())
                .with_version(version)
                .with_cipher(cipher);
            let mut client = Client::connect_authenticated(addr, &credentials)
                .await
                .unwrap();
            assert!(client.is_authenticated());
            // Several requests, one larger than a socket read, so the keystreams carry on
            // across frames and reads.
            for len in [1, 300_000, 17] {
                let body = Bytes::from(crate::fixture::pseudo_random_bytes(len as u64, len));
                let echoed = client.rpc_raw(body.clone()).await.unwrap();
                assert_eq!(echoed, body, "{version:?} {cipher:?} {len}");
            }
        }
    }
}

#[tokio::test]
async fn a_refusal_comes_back_with_the_servers_text() {
    let addr = serve(Script::Honest {
        version: AuthEngineVersion::V1,
        cipher: CipherMode::Ctr,
    })
    .await;
    let err = Client::connect_authenticated(addr, &Credentials::new("app-2", SECRET.into()))
        .await
        .unwrap_err();
    let Error::Failure(text) = err else {
        panic!("not the server's refusal: {err:?}")
    };
    assert!(text.contains("'app-2'"), "{text}");

    let addr = serve(Script::Honest {
        version: AuthEngineVersion::V1,
        cipher: CipherMode::Ctr,
    })
    .await;
    let err = Client::connect_authenticated(addr, &Credentials::new(APP, "wrong".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Failure(_)), "{err:?}");
}

#[tokio::test]
async fn a_response_that_does_not_verify_is_an_auth_error() {
    let addr = serve(Script::Garbage).await;
    let mut client = Client::connect(addr).await.unwrap();
    let err = client
        .authenticate(&Credentials::new(APP, SECRET.into()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    assert!(!client.is_authenticated());
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let addr = serve(Script::Silent).await;
    let mut client = Client::connect(addr).await.unwrap();
    client.set_read_timeout(Duration::from_millis(200));
    let err = client
        .authenticate(&Credentials::new(APP, SECRET.into()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
}
