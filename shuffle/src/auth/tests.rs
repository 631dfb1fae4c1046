//! Tests of the auth layer: Appendix A.4 vectors recorded from the real Spark classes, server
//! handshakes against our own client, DIGEST-MD5 against recorded JDK exchanges, malformed
//! input, and (see `interop.rs`) live runs against Spark's own client classes.

use std::sync::Arc;

use super::digest::{self, SASL_USER};
use super::engine::{self, SessionKeys};
use super::message::{AuthMessage, SaslMessage};
use super::*;

mod handshake;
mod interop;
mod sasl;
mod transport;

pub(super) fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random source that hands out `chunks` in order (each must match the request's length),
/// then a deterministic pattern.
pub(super) fn scripted(chunks: Vec<Vec<u8>>) -> impl FnMut(&mut [u8]) {
    scripted_seeded(chunks, 0)
}

fn scripted_seeded(chunks: Vec<Vec<u8>>, seed: u8) -> impl FnMut(&mut [u8]) {
    let mut chunks = chunks.into_iter();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    move |buf: &mut [u8]| match chunks.next() {
        Some(chunk) => {
            assert_eq!(chunk.len(), buf.len(), "scripted random chunk size");
            buf.copy_from_slice(&chunk);
        }
        None => {
            for b in buf {
                // xorshift64*
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                *b = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
            }
        }
    }
}

fn seeded(seed: u8) -> impl FnMut(&mut [u8]) {
    scripted_seeded(Vec::new(), seed)
}

pub(super) fn ctr(t: TransportCipher) -> CtrCipher {
    match t {
        TransportCipher::Ctr(c) => c,
        other => panic!("expected AES-CTR, got {other:?}"),
    }
}

fn challenge_for(app: &str, secret: &str, version: AuthEngineVersion) -> (ClientAuth, Vec<u8>) {
    ClientAuth::challenge(app, Secret::from(secret), version, &mut seeded(3)).unwrap()
}

fn server(secrets: StaticSecrets, version: AuthEngineVersion, fallback: bool) -> ServerAuth {
    ServerAuth::new(Arc::new(secrets), version, fallback)
}

fn app1_secrets() -> StaticSecrets {
    StaticSecrets::per_app(Default::default()).with_app("app-1", Secret::from("secret"))
}

// === Errors ===

#[test]
fn error_kinds_are_distinct() {
    let all = [
        Error::UnknownChallenge { tag: None },
        Error::NotSasl { tag: None },
        Error::bad("x", "y"),
        Error::UnknownApp { app: "a".into() },
        Error::Failed { reason: "r" },
        Error::sasl("r"),
        Error::UnsupportedQop { qop: "q".into() },
        Error::Finished { state: "failed" },
        Error::Internal { what: "w" },
    ];
    let mut kinds: Vec<_> = all.iter().map(Error::kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), all.len());
    assert_eq!(all.iter().filter(|e| !e.caused_by_peer()).count(), 1);
}

#[test]
fn long_app_ids_are_truncated_in_errors() {
    let app = "é".repeat(300);
    let (_, c) = challenge_for(&app, "secret", AuthEngineVersion::V1);
    let err = server(app1_secrets(), AuthEngineVersion::V1, true)
        .step(&c, &mut seeded(1))
        .unwrap_err();
    let Error::UnknownApp { app: shown } = err else {
        panic!("{err:?}")
    };
    assert!(shown.len() <= 131 && shown.ends_with("..."));
}

#[test]
fn secrets_are_not_debug_printed() {
    let s = Secret::from("hunter2");
    assert!(!format!("{s:?}").contains("hunter2"));
    let secrets = StaticSecrets::shared(Secret::from("hunter2")).with_app("a", Secret::from("x"));
    assert!(!format!("{secrets:?}").contains("hunter2"));
    assert_eq!(secrets.secret("a").unwrap().as_bytes(), b"x");
    assert_eq!(secrets.secret("b").unwrap().as_bytes(), b"hunter2");
    assert!(
        StaticSecrets::per_app(Default::default())
            .secret("a")
            .is_none()
    );
}

// === Arbitrary input ===

#[test]
fn arbitrary_payloads_never_panic_or_authenticate() {
    // Deterministic pseudo-random payloads, mostly starting with an auth tag, fed as the first
    // and as the second message of an exchange.
    let mut random = seeded(42);
    let (_, valid) = challenge_for("app-1", "secret", AuthEngineVersion::V1);
    for i in 0..20_000usize {
        let mut len = [0u8; 1];
        random(&mut len);
        let mut payload = vec![0u8; usize::from(len[0]) % 120];
        random(&mut payload);
        match i % 4 {
            0 => {
                if let Some(b) = payload.first_mut() {
                    *b = AUTH_MESSAGE_TAG;
                }
            }
            1 => {
                if let Some(b) = payload.first_mut() {
                    *b = SASL_MESSAGE_TAG;
                }
            }
            2 => {
                // A valid challenge with a random tail spliced in.
                let cut = i % valid.len();
                payload = [&valid[..cut], &payload[..]].concat();
            }
            _ => {}
        }
        let mut auth = server(app1_secrets(), AuthEngineVersion::V1, true);
        if let Ok(step) = auth.step(&payload, &mut seeded(1)) {
            assert!(
                matches!(step, AuthStep::Continue(_)),
                "payload {i} authenticated"
            );
            // In the middle of SASL: the second message is random too.
            let mut second = payload.clone();
            second.extend_from_slice(&payload);
            assert!(auth.step(&second, &mut seeded(2)).is_err());
        }
    }
}

#[test]
fn state_moves_between_threads() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<ServerAuth>();
    send::<TransportCipher>();
    send::<AuthStep>();
    send::<ClientAuth>();
    send::<SaslClient>();
    send::<Error>();
    sync::<Error>();
    sync::<StaticSecrets>();
}
