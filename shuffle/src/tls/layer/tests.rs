use std::io::{Read, Write};
use std::sync::Arc;

use bytes::BytesMut;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection};

use super::{Error, Layer, whole_records};
use crate::test_rng::Rng;
use crate::tls::CertStore;

/// A server config for a fresh self-signed `localhost` certificate, and a client config that
/// trusts it.
fn configs() -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
    let store = Arc::new(CertStore::load(&cert_path, &key_path).unwrap());
    let client = crate::tls::client_config([CertificateDer::from(key.cert.der().to_vec())]);
    (
        Arc::new(store.server_config().unwrap()),
        Arc::new(client.unwrap()),
    )
}

fn client(config: &Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(
        Arc::clone(config),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap()
}

/// What `client` has to send, as bytes on the wire.
fn client_output(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    out
}

/// Hands `bytes` to the server in pieces of `step` (records split anywhere), returning the
/// plaintext, and checks nothing but a partial record is ever left over.
fn feed(server: &mut Layer, received: &mut BytesMut, bytes: &[u8], step: usize) -> BytesMut {
    let mut plain = BytesMut::new();
    for piece in bytes.chunks(step) {
        received.extend_from_slice(piece);
        server.open(received, &mut plain).unwrap();
        assert_eq!(whole_records(received), 0, "a whole record was left unread");
    }
    plain
}

/// Runs the handshake, `step` bytes at a time towards the server; returns both ends.
fn handshake(step: usize) -> (Layer, ClientConnection, BytesMut) {
    let (server_config, client_config) = configs();
    handshake_with(&server_config, &client_config, step)
}

fn handshake_with(
    server_config: &Arc<rustls::ServerConfig>,
    client_config: &Arc<ClientConfig>,
    step: usize,
) -> (Layer, ClientConnection, BytesMut) {
    let mut server = Layer::new(Arc::clone(server_config)).unwrap();
    let mut client = client(client_config);
    let mut received = BytesMut::new();
    assert!(!server.is_handshaking(), "no byte yet: nothing in progress");
    while client.is_handshaking() {
        let hello = client_output(&mut client);
        let plain = feed(&mut server, &mut received, &hello, step);
        assert!(plain.is_empty());
        let mut reply = BytesMut::new();
        server.seal(&[], &mut reply).unwrap();
        client.read_tls(&mut reply.as_ref()).unwrap();
        client.process_new_packets().unwrap();
    }
    // The client's Finished.
    let finished = client_output(&mut client);
    feed(&mut server, &mut received, &finished, step);
    assert!(!server.is_handshaking());
    (server, client, received)
}

#[test]
fn a_rustls_client_completes_the_handshake_and_data_round_trips_both_ways() {
    for step in [1, 7, 4096, usize::MAX] {
        let (mut server, mut client, mut received) = handshake(step);
        let (version, _suite) = server.negotiated().unwrap();
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);

        // A request larger than a record, split anywhere on its way in.
        let request: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        client.writer().write_all(&request).unwrap();
        let wire = client_output(&mut client);
        let plain = feed(&mut server, &mut received, &wire, step);
        assert_eq!(&plain[..], &request[..], "step {step}");

        // A reply of several records, sealed in place half the time.
        let reply: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let mut out = BytesMut::new();
        if step % 2 == 0 {
            out.extend_from_slice(&reply);
            server.seal_in_place(&mut out).unwrap();
        } else {
            server.seal(&reply, &mut out).unwrap();
        }
        let mut got = Vec::new();
        let mut wire = out.as_ref();
        while !wire.is_empty() {
            client.read_tls(&mut wire).unwrap();
            let state = client.process_new_packets().unwrap();
            let mut piece = vec![0; state.plaintext_bytes_to_read()];
            client.reader().read_exact(&mut piece).unwrap();
            got.extend_from_slice(&piece);
        }
        assert_eq!(got, reply, "step {step}");

        // close_notify reaches the client.
        server.close();
        let mut out = BytesMut::new();
        server.seal(&[], &mut out).unwrap();
        client.read_tls(&mut out.as_ref()).unwrap();
        assert!(client.process_new_packets().unwrap().peer_has_closed());
    }
}

#[test]
fn a_spark_frame_in_the_clear_is_named() {
    let (server_config, _) = configs();
    let mut server = Layer::new(server_config).unwrap();
    // The length field of a frame: 8 bytes, big-endian, the first one 0 for any real frame.
    let mut received = BytesMut::from(&[0u8, 0, 0, 0, 0, 0, 0, 21, 3][..]);
    let err = server
        .open(&mut received, &mut BytesMut::new())
        .unwrap_err();
    assert!(matches!(err, Error::Plaintext), "{err}");
    assert!(
        err.to_string().contains("spark.ssl.rpc.enabled=true"),
        "{err}"
    );
}

#[test]
fn other_bytes_are_refused_at_once() {
    let (server_config, _) = configs();
    let mut server = Layer::new(server_config).unwrap();
    let mut received = BytesMut::from(&b"GET /metrics HTTP/1.1\r\n\r\n"[..]);
    let err = server
        .open(&mut received, &mut BytesMut::new())
        .unwrap_err();
    assert!(matches!(err, Error::NotTls(b'G')), "{err}");
    assert_eq!(
        err.to_string(),
        "the peer does not open with a TLS handshake (first byte 0x47)"
    );
}

#[test]
fn a_broken_handshake_record_fails_with_an_alert_for_the_peer() {
    let (server_config, _) = configs();
    let mut server = Layer::new(server_config).unwrap();
    // A handshake record whose message is not a ClientHello.
    let mut received = BytesMut::from(&[22u8, 3, 1, 0, 4, 99, 0, 0, 0][..]);
    let err = server
        .open(&mut received, &mut BytesMut::new())
        .unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err}");
    assert!(server.wants_write(), "no alert queued for the peer");
}

#[test]
fn a_client_that_refuses_the_certificate_is_named() {
    let (server_config, _) = configs();
    // A client that trusts no certificate at all.
    let untrusting = crate::tls::client_config([]).unwrap();
    let mut server = Layer::new(server_config).unwrap();
    let mut client = client(&Arc::new(untrusting));
    let mut received = BytesMut::new();
    let err = loop {
        received.extend_from_slice(&client_output(&mut client));
        if let Err(e) = server.open(&mut received, &mut BytesMut::new()) {
            break e;
        }
        let mut reply = BytesMut::new();
        server.seal(&[], &mut reply).unwrap();
        client.read_tls(&mut reply.as_ref()).unwrap();
        assert!(client.process_new_packets().is_err() || client.is_handshaking());
    };
    assert!(
        matches!(err, Error::Untrusted(rustls::AlertDescription::UnknownCA)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("spark.ssl.rpc.trustStore"),
        "{err}"
    );
}

#[test]
fn a_tampered_record_is_refused() {
    let (mut server, mut client, mut received) = handshake(usize::MAX);
    client.writer().write_all(b"a request").unwrap();
    let mut wire = client_output(&mut client);
    let last = wire.len() - 1;
    wire[last] ^= 1;
    received.extend_from_slice(&wire);
    let err = server
        .open(&mut received, &mut BytesMut::new())
        .unwrap_err();
    assert!(
        matches!(err, Error::Protocol(rustls::Error::DecryptError)),
        "{err:?}"
    );
}

#[test]
fn whole_records_counts_complete_records_only() {
    let record = |len: usize| {
        let mut r = vec![23, 3, 3];
        r.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        r.resize(5 + len, 0xAB);
        r
    };
    assert_eq!(whole_records(&[]), 0);
    assert_eq!(whole_records(&[23, 3, 3, 0]), 0, "a partial header");
    let two = [record(10), record(300)].concat();
    assert_eq!(whole_records(&two), two.len());
    assert_eq!(
        whole_records(&two[..two.len() - 1]),
        15,
        "the second is not complete"
    );
    // An impossible length or content type: everything is handed over, for rustls to refuse.
    let mut huge = vec![23, 3, 3, 0xFF, 0xFF];
    huge.extend_from_slice(&[0; 10]);
    assert_eq!(whole_records(&huge), huge.len());
    let unknown = [&record(10)[..], &[99, 3, 3, 0, 200]].concat();
    assert_eq!(whole_records(&unknown), unknown.len());
}

/// Many sessions, each sending requests of random sizes that arrive cut at random places,
/// some with one byte flipped on the way: the server returns exactly what was sent, or, after
/// a flip, a prefix of it before it refuses (or waits for a record a flipped length made
/// longer); it never returns other bytes, never keeps a whole record unread, and never
/// panics.
#[test]
fn any_cut_gives_the_bytes_sent_and_any_flipped_byte_is_refused() {
    let (server_config, client_config) = configs();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..60 {
        let (mut server, mut client, mut received) =
            handshake_with(&server_config, &client_config, 1 + rng.below(300));
        client.set_buffer_limit(None);
        let mut expected = Vec::new();
        let mut got = BytesMut::new();
        let (mut refused, mut flipped) = (false, false);
        for _ in 0..1 + rng.below(4) {
            let len = rng.below(70_000);
            let request: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            client.writer().write_all(&request).unwrap();
            expected.extend_from_slice(&request);
            let mut wire = client_output(&mut client);
            let flip = !wire.is_empty() && rng.below(4) == 0;
            if flip {
                flipped = true;
                let at = rng.below(wire.len());
                wire[at] ^= 1 << rng.below(8);
            }
            let mut at = 0;
            while at < wire.len() {
                let piece = (1 + rng.below(20_000)).min(wire.len() - at);
                received.extend_from_slice(&wire[at..at + piece]);
                at += piece;
                if server.open(&mut received, &mut got).is_err() {
                    refused = true;
                    break;
                }
                assert_eq!(whole_records(&received), 0, "case {case}");
            }
            assert!(
                flip || !refused,
                "case {case}: an intact stream was refused"
            );
            if refused {
                break;
            }
        }
        // What came out is always a prefix of what went in; all of it when nothing was
        // flipped (a flipped length field may also leave the server waiting for more).
        assert!(got.len() <= expected.len(), "case {case}");
        assert_eq!(&got[..], &expected[..got.len()], "case {case}");
        if !flipped {
            assert_eq!(got.len(), expected.len(), "case {case}");
        }
    }
}
