//! Check of the TLS layer ([`crate::tls::Layer`]) on what a peer sends before a handshake
//! completes: arbitrary bytes, cut anywhere, as the records a client would open with.
//!
//! The server has no certificate (its resolver finds none), so no handshake can complete
//! and the check needs no key: everything up to and including the ClientHello's processing
//! is reached, which is all a peer can reach before proving nothing. Records after a
//! handshake (decryption, cut records, flipped bytes) are covered by the layer's unit tests.
//!
//! Input layout (what `fuzz/corpus/tls_records/` files hold): pieces, each a big-endian
//! `u16` length and that many bytes, handed to the layer one after the other.

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{Input, assert_alloc_bounded, measure};
use crate::tls::{Layer, whole_records};

/// Finds no certificate for any ClientHello.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesServerCert for NoCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

fn config() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_no_client_auth())
            .map(|b| b.with_cert_resolver(Arc::new(NoCertificate)));
        match config {
            Ok(config) => Arc::new(config),
            Err(e) => panic!("ring's defaults make a server config: {e}"),
        }
    }))
}

/// Bytes before a handshake: no plaintext ever comes out; after each piece, the bytes kept
/// are less than a whole record (a record still arriving); allocation per piece follows the
/// bytes held, not a length a header declared; an error ends the session (as the connection
/// ends then), and the layer never panics.
///
/// # Panics
/// When an invariant is broken.
pub fn check_tls_records(data: &[u8]) {
    let mut input = Input::new(data);
    let Ok(mut layer) = Layer::new(config()) else {
        panic!("a session starts with the fuzz config");
    };
    let (mut received, mut plain) = (BytesMut::new(), BytesMut::new());
    loop {
        let piece = input.piece();
        if piece.is_empty() && input.is_empty() {
            return;
        }
        received.extend_from_slice(piece);
        let held = received.len();
        let (result, peak) = measure(|| layer.open(&mut received, &mut plain));
        assert_alloc_bounded("tls open", peak, held, 4);
        assert!(plain.is_empty(), "plaintext without a handshake");
        if result.is_err() {
            return;
        }
        assert_eq!(whole_records(&received), 0, "a whole record left unread");
    }
}
