//! Check of the server side of `spark.authenticate`: arbitrary client bytes, and real
//! clients' messages with and without mutations, fed to [`ServerAuth`].
//!
//! Input layout (what `fuzz/corpus/auth_handshake/` files hold): byte 0 is a set of flags
//! (bit 0: auth engine version 2; bit 1: AES-GCM transport; bit 2: SASL fallback off;
//! bits 3-4: the scenario; bit 6: the client has the wrong secret), then 8 bytes seeding the
//! server's randomness, then the scenario's own bytes:
//! - `0` raw: up to four `u16`-length-prefixed payloads, sent as they are (real Spark
//!   handshakes recorded by `fuzz/record-corpus.sh` land here; they were made with another
//!   secret);
//! - `1`/`2` AuthEngine: a real [`ClientAuth`] (random bytes from the input) with the right
//!   (`1`) or wrong (`2`) secret, its challenge possibly mutated;
//! - `3` SASL: a real [`SaslClient`], both of its messages possibly mutated.
//!
//! Invariants: no success without the right secret and the client's exact bytes (AES-GCM
//! and DIGEST-MD5 make any change fail); the honest client with the right secret always
//! succeeds, for its own app id, and both transport ciphers then agree; the exchange ends
//! (done or failed) within two messages and then refuses everything; the state kept between
//! messages and the memory used per message are bounded; no error text holds the secret.

use std::sync::Arc;

use bytes::BytesMut;

use super::{Input, assert_alloc_bounded, measure};
use crate::auth::{
    AuthEngineVersion, AuthStep, CipherMode, ClientAuth, Error, SaslClient, Secret, ServerAuth,
    StaticSecrets, TransportCipher,
};

/// The app whose secret the server knows.
pub const AUTH_APP_ID: &str = "app-20260101000000-0000";
/// That app's secret (not the one the recorded corpus was made with).
pub const AUTH_SECRET: &str = "kshuffle-fuzz-secret";
/// What a client without the secret tries.
const WRONG_SECRET: &str = "kshuffle-fuzz-guess";
/// Bound of [`ServerAuth::retained_bytes`]: an app id (at most 1 KiB) plus the DIGEST-MD5
/// nonce and password.
const MAX_STATE_BYTES: usize = 4096;

/// A tiny deterministic generator for the server's and clients' random bytes.
struct Rng(u64);

impl Rng {
    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = (self.0 >> 24) as u8;
        }
    }
}

/// The server under test, with what it has answered so far.
struct Server {
    auth: ServerAuth,
    rng: Rng,
    /// Messages answered with `Continue`/`Done`/an error other than `Finished`.
    live_steps: usize,
    ended: Option<&'static str>,
}

impl Server {
    fn step(&mut self, payload: &[u8]) -> Result<AuthStep, Error> {
        let Server { auth, rng, .. } = self;
        let (result, peak) = measure(|| auth.step(payload, &mut |b| rng.fill(b)));
        assert_alloc_bounded("auth step", peak, payload.len(), 4);
        assert!(
            self.auth.retained_bytes() <= MAX_STATE_BYTES,
            "auth state keeps {} bytes",
            self.auth.retained_bytes()
        );
        match (&result, self.ended) {
            (Err(Error::Finished { state }), Some(ended)) => assert_eq!(*state, ended),
            (other, Some(ended)) => panic!("a {ended} exchange answered {other:?}"),
            (Ok(AuthStep::Continue(_)), None) => self.live_steps += 1,
            (Ok(AuthStep::Done { .. }), None) => {
                self.live_steps += 1;
                self.ended = Some("completed");
            }
            (Err(e), None) => {
                assert!(!matches!(e, Error::Finished { .. }), "finished too early");
                self.live_steps += 1;
                self.ended = Some("failed");
            }
        }
        assert!(self.live_steps <= 2, "exchange still open after 2 messages");
        assert_eq!(self.auth.is_done(), self.ended == Some("completed"));
        if let Err(e) = &result {
            let text = e.to_string();
            // Peer text is quoted back (an app id, a directive): only a secret the peer did not
            // send itself would be a leak.
            let sent = payload
                .windows(AUTH_SECRET.len())
                .any(|w| w == AUTH_SECRET.as_bytes());
            assert!(
                sent || !text.contains(AUTH_SECRET),
                "error text holds the secret"
            );
            assert!(text.len() <= 1024, "error text of {} bytes", text.len());
        }
        result
    }
}

/// Applies an optional mutation from the input to `payload`; returns whether it changed.
fn mutate(input: &mut Input<'_>, payload: &mut Vec<u8>) -> bool {
    let original = payload.clone();
    let how = input.u8();
    if how < 128 {
        return false;
    }
    let pos = usize::from(input.u16());
    match how % 4 {
        0 => {
            if let Some(b) = payload.get_mut(pos % original.len().max(1)) {
                *b ^= input.u8() | 1;
            }
        }
        1 => payload.truncate(pos % original.len().max(1)),
        2 => payload.extend_from_slice(input.piece()),
        _ => {
            let at = pos % (original.len() + 1);
            let piece = input.piece();
            payload.splice(at..at, piece.iter().copied());
        }
    }
    *payload != original
}

/// The auth handshake check (see the module docs).
///
/// # Panics
/// When an invariant is broken.
pub fn check_auth_handshake(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let version = if flags & 1 == 0 {
        AuthEngineVersion::V1
    } else {
        AuthEngineVersion::V2
    };
    let cipher = if flags & 2 == 0 {
        CipherMode::Ctr
    } else {
        CipherMode::Gcm
    };
    let sasl_fallback = flags & 4 == 0;
    let right = flags & 0x40 == 0;
    let seed = u64::from(input.u32()) << 32 | u64::from(input.u32()) | 1;
    let secrets = Arc::new(StaticSecrets::per_app(
        [(AUTH_APP_ID.to_owned(), Secret::from(AUTH_SECRET))].into(),
    ));
    let mut server = Server {
        auth: ServerAuth::new(secrets, version, sasl_fallback).with_cipher(cipher),
        rng: Rng(seed),
        live_steps: 0,
        ended: None,
    };
    let mut client_rng = Rng(seed.rotate_left(17) | 1);
    match (flags >> 3) % 4 {
        0 => {
            for _ in 0..4 {
                let payload = input.piece();
                let result = server.step(payload);
                assert!(
                    !matches!(result, Ok(AuthStep::Done { .. })),
                    "raw bytes authenticated"
                );
            }
        }
        scenario @ (1 | 2) => {
            let secret = if scenario == 1 {
                AUTH_SECRET
            } else {
                WRONG_SECRET
            };
            let (client, challenge) =
                ClientAuth::challenge(AUTH_APP_ID, Secret::from(secret), version, &mut |b| {
                    client_rng.fill(b)
                })
                .expect("client challenge");
            let client = client.with_cipher(cipher);
            let mut payload = challenge;
            let mutated = mutate(&mut input, &mut payload);
            let result = server.step(&payload);
            match result {
                Ok(AuthStep::Done {
                    reply,
                    app_id,
                    transport,
                }) => {
                    assert!(scenario == 1, "authenticated with the wrong secret");
                    assert!(!mutated, "authenticated an altered challenge");
                    assert_eq!(app_id, AUTH_APP_ID);
                    let mut server_cipher = transport.expect("AuthEngine sets up a cipher");
                    let mut client_cipher = client.finish(&reply).expect("client accepts");
                    let text = input.piece();
                    let mut round_trip = |from: &mut TransportCipher, to: &mut TransportCipher| {
                        let mut wire = BytesMut::new();
                        from.seal(text, &mut |b| client_rng.fill(b), &mut wire)
                            .expect("seal");
                        let mut opened = BytesMut::new();
                        to.open(&mut wire, &mut opened).expect("open");
                        assert_eq!(&opened[..], text, "transport ciphers disagree");
                    };
                    round_trip(&mut client_cipher, &mut server_cipher);
                    round_trip(&mut server_cipher, &mut client_cipher);
                }
                Ok(AuthStep::Continue(_)) => panic!("AuthEngine asked for a second message"),
                Err(_) => assert!(
                    scenario == 2 || mutated,
                    "the right secret and an intact challenge were refused: {result:?}"
                ),
            }
        }
        _ => {
            let secret = Secret::from(if right { AUTH_SECRET } else { WRONG_SECRET });
            let (mut client, first) = SaslClient::start(AUTH_APP_ID, &secret);
            let mut payload = first;
            let mut mutated = mutate(&mut input, &mut payload);
            let result = server.step(&payload);
            if !sasl_fallback {
                assert!(result.is_err(), "SASL accepted with the fallback off");
                return;
            }
            let reply = match result {
                Ok(AuthStep::Continue(challenge)) => {
                    client.respond(&challenge, &mut |b| client_rng.fill(b))
                }
                Ok(AuthStep::Done { .. }) => panic!("SASL done after one message"),
                Err(e) => {
                    assert!(mutated, "an intact first SASL message was refused: {e}");
                    return;
                }
            };
            let mut payload = reply.expect("the client understands the server's challenge");
            mutated |= mutate(&mut input, &mut payload);
            match server.step(&payload) {
                Ok(AuthStep::Done { reply, app_id, .. }) => {
                    assert!(right, "SASL authenticated with the wrong secret");
                    assert_eq!(app_id, AUTH_APP_ID);
                    if !mutated {
                        client.finish(&reply).expect("client accepts rspauth");
                    }
                }
                Ok(AuthStep::Continue(_)) => panic!("SASL asked for a third message"),
                Err(e) => assert!(
                    !right || mutated,
                    "the right secret and intact messages were refused: {e}"
                ),
            }
        }
    }
    // Whatever happened, the exchange is over or still at its first steps; one more message
    // after the end is refused.
    let extra = input.piece();
    if server.ended.is_some() {
        assert!(matches!(server.step(extra), Err(Error::Finished { .. })));
    }
}
