//! Server side of `spark.authenticate` as a pure state machine: Spark's AuthEngine handshake
//! (X25519 + HKDF + AES-GCM, protocol §6.2), the transport cipher that follows it (AES-CTR,
//! §6.3, or AES-GCM messages, §6.4), and the SASL DIGEST-MD5 exchange Spark falls back to
//! (§6.5).
//!
//! No I/O. The connection layer feeds every auth `RpcRequest` payload of a connection to one
//! [`ServerAuth`] and sends back what [`ServerAuth::step`] returns, until it says
//! [`AuthStep::Done`]; every other request before that is refused. Randomness comes from the
//! caller (`random` closures; [`fill_random`] in production) so tests are deterministic.
//!
//! How the connection layer uses it:
//! 1. per connection, `ServerAuth::new(secrets, version, sasl_fallback).with_cipher(mode)`;
//! 2. every `RpcRequest` payload before authentication → [`ServerAuth::step`]:
//!    `Continue(reply)` → `RpcResponse(reply)`; `Err(e)` → `RpcFailure(e.to_string())`, then
//!    close; `Done { reply, app_id, transport }` → `RpcResponse(reply)` **in clear**, then the
//!    connection belongs to `app_id` and, if `transport` is `Some`, every later byte goes
//!    through [`TransportCipher::seal`] (out) / [`TransportCipher::open`] (in);
//! 3. anything else before `Done` (chunk/stream fetches, one-way messages) is refused.
//!
//! [`ClientAuth`] and [`SaslClient`] are the client sides, for tests and kshuffle's clients;
//! `tests/interop.rs` drives Spark's own client classes against [`ServerAuth`].
//!
//! Invariants:
//! - nothing here panics or allocates from a length sent by the peer before checking that the
//!   bytes are present (messages are parsed as borrowed slices);
//! - a failed [`ServerAuth`] stays failed, and a finished one refuses further messages;
//! - error texts ([`Error`]'s `Display`) are what the peer sees in `RpcFailure`; they never
//!   contain secret material.

mod cipher;
mod digest;
mod engine;
mod error;
mod gcm;
mod message;
mod sasl_client;
mod secret;
mod server;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use cipher::{CipherMode, CtrCipher, TransportCipher};
pub use engine::ClientAuth;
pub use error::{Error, MAX_PEER_TEXT_BYTES};
pub use gcm::GcmCipher;
pub use sasl_client::SaslClient;
pub use secret::{Layered, Secret, SecretSource, StaticSecrets};
pub use server::{AuthEngineVersion, AuthStep, ServerAuth};

/// First byte of an AuthEngine message (`AuthMessage.TAG_BYTE`).
pub const AUTH_MESSAGE_TAG: u8 = 0xFB;
/// First byte of a SASL message (`SaslMessage.TAG_BYTE`).
pub const SASL_MESSAGE_TAG: u8 = 0xEA;

/// Whether an RPC payload looks like an auth message (AuthEngine or SASL), by its first byte.
///
/// Useful to a server without auth: such a payload means the client has `spark.authenticate`
/// on while this server has it off.
pub fn is_auth_payload(payload: &[u8]) -> bool {
    matches!(
        payload.first(),
        Some(&AUTH_MESSAGE_TAG) | Some(&SASL_MESSAGE_TAG)
    )
}

/// Fills `buf` from the operating system's CSPRNG (`getrandom(2)`): the `random` argument of
/// [`ServerAuth::step`] in production.
///
/// # Panics
/// If `getrandom(2)` fails for another reason than an interrupt (it does not on Linux ≥ 3.17
/// once the pool is initialised); authentication cannot proceed safely without randomness.
pub fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        match rustix::rand::getrandom(rest, rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("getrandom(2) failed ({e}); cannot authenticate without randomness"),
        }
    }
}
