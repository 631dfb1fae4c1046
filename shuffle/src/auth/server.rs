//! [`ServerAuth`]: the per-connection state machine that picks the protocol from the first
//! auth message (protocol §6.1) and runs it to completion.
//!
//! - `0xFB` (AuthMessage) → the AuthEngine handshake: one round trip, then AES-CTR.
//! - `0xEA` (SaslMessage), when SASL fallback is on → DIGEST-MD5: two round trips, no
//!   transport protection. Spark clients with `spark.network.crypto.enabled=false` start here;
//!   those with it on come here after the AuthEngine attempt failed against a server that does
//!   not speak it.
//! - anything else → refused, as Spark's `AuthRpcHandler` / `SaslRpcHandler` refuse it.

use std::sync::Arc;

use bytes::Bytes;

use super::digest::DigestServer;
use super::engine;
use super::error::truncate_peer_text;
use super::message::{AuthMessage, SaslMessage};
use super::{AUTH_MESSAGE_TAG, CipherMode, Error, SASL_MESSAGE_TAG, SecretSource, TransportCipher};

/// `spark.network.crypto.authEngineVersion`. The server cannot tell from the handshake which
/// one the client uses: both sides must be configured alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthEngineVersion {
    /// Version 1 (Spark's default in 3.5 and 4.x): the raw X25519 shared secret is the
    /// AES-256 session key.
    #[default]
    V1,
    /// Version 2: the session key is `HKDF(shared, transcript, "derivedKey", 16)` (AES-128).
    V2,
}

impl AuthEngineVersion {
    /// The version with Spark's configuration number (1 or 2).
    pub fn from_number(n: u32) -> Option<Self> {
        match n {
            1 => Some(AuthEngineVersion::V1),
            2 => Some(AuthEngineVersion::V2),
            _ => None,
        }
    }
}

/// What to do after one auth message.
#[derive(Debug)]
pub enum AuthStep {
    /// Reply with this `RpcResponse` payload; more auth messages follow.
    Continue(Bytes),
    /// Reply with this `RpcResponse` payload **in clear**; the connection is then
    /// authenticated as `app_id`. Install `transport` (if any) for every byte after this
    /// reply, in both directions: sealing every write, opening every read. `None`: no
    /// transport protection (SASL QOP `auth`).
    Done {
        /// The `RpcResponse` payload.
        reply: Bytes,
        /// The authenticated application: the connection's client id from now on.
        app_id: String,
        /// The cipher pair to install after sending `reply`.
        transport: Option<TransportCipher>,
    },
}

/// The server side of one connection's authentication. Feed it the payload of every
/// `RpcRequest` that arrives until it returns [`AuthStep::Done`] or an error; after an error
/// the connection must be closed (the error's text goes back in `RpcFailure` first).
pub struct ServerAuth {
    secrets: Arc<dyn SecretSource>,
    version: AuthEngineVersion,
    cipher: CipherMode,
    sasl_fallback: bool,
    state: State,
}

enum State {
    /// No auth message seen yet.
    Start,
    /// The DIGEST-MD5 challenge was sent to `app_id`.
    Sasl {
        app_id: String,
        digest: DigestServer,
    },
    /// Authenticated.
    Done,
    /// Refused; the connection should be closed.
    Failed,
}

// === impl ServerAuth ===

impl ServerAuth {
    /// A fresh exchange. `sasl_fallback` (Spark's `spark.network.crypto.saslFallback`,
    /// default true) accepts SASL DIGEST-MD5 clients besides AuthEngine ones.
    pub fn new(
        secrets: Arc<dyn SecretSource>,
        version: AuthEngineVersion,
        sasl_fallback: bool,
    ) -> Self {
        ServerAuth {
            secrets,
            version,
            cipher: CipherMode::Ctr,
            sasl_fallback,
            state: State::Start,
        }
    }

    /// The transport cipher AuthEngine clients are configured with
    /// (`spark.network.crypto.cipher`; default [`CipherMode::Ctr`]). The handshake cannot tell,
    /// so a mismatch shows up as garbage after authentication.
    pub fn with_cipher(mut self, mode: CipherMode) -> Self {
        self.cipher = mode;
        self
    }

    /// Whether authentication has completed successfully.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Bytes this exchange keeps between messages (the claimed app id and the DIGEST-MD5
    /// nonce and password while SASL is half done; nothing otherwise). For the fuzz checks'
    /// bounded-state invariant.
    #[doc(hidden)]
    pub fn retained_bytes(&self) -> usize {
        match &self.state {
            State::Sasl { app_id, digest } => app_id.capacity() + digest.retained_bytes(),
            State::Start | State::Done | State::Failed => 0,
        }
    }

    /// Processes one auth `RpcRequest` payload. `random` fills buffers with secure random
    /// bytes ([`super::fill_random`] in production).
    ///
    /// # Errors
    /// Any [`Error`]: send its text in `RpcFailure` and close the connection. Every later call
    /// returns [`Error::Finished`].
    pub fn step(
        &mut self,
        payload: &[u8],
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Result<AuthStep, Error> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let (next, result) = match state {
            State::Start => match payload.first() {
                Some(&AUTH_MESSAGE_TAG) => self.auth_engine(payload, random),
                Some(&SASL_MESSAGE_TAG) if self.sasl_fallback => self.sasl_start(payload, random),
                tag if self.sasl_fallback => {
                    (State::Failed, Err(Error::NotSasl { tag: tag.copied() }))
                }
                tag => (
                    State::Failed,
                    Err(Error::UnknownChallenge { tag: tag.copied() }),
                ),
            },
            State::Sasl { app_id, digest } => sasl_finish(app_id, &digest, payload),
            State::Done => (State::Done, Err(Error::Finished { state: "completed" })),
            State::Failed => (State::Failed, Err(Error::Finished { state: "failed" })),
        };
        self.state = next;
        result
    }

    fn auth_engine(
        &self,
        payload: &[u8],
        random: &mut dyn FnMut(&mut [u8]),
    ) -> (State, Result<AuthStep, Error>) {
        let result = (|| {
            let challenge = AuthMessage::decode(payload)?;
            let secret = self
                .secrets
                .secret(challenge.app_id)
                .ok_or_else(|| unknown_app(challenge.app_id))?;
            let response = engine::respond(
                &secret,
                payload,
                &challenge,
                self.version,
                self.cipher,
                random,
            )?;
            Ok(AuthStep::Done {
                reply: Bytes::from(response.reply),
                app_id: challenge.app_id.to_owned(),
                transport: Some(response.cipher),
            })
        })();
        let next = if result.is_ok() {
            State::Done
        } else {
            State::Failed
        };
        (next, result)
    }

    fn sasl_start(
        &self,
        payload: &[u8],
        random: &mut dyn FnMut(&mut [u8]),
    ) -> (State, Result<AuthStep, Error>) {
        let result = (|| {
            let msg = SaslMessage::decode(payload)?;
            if !msg.token.is_empty() {
                return Err(Error::sasl("DIGEST-MD5 must not have an initial response"));
            }
            let secret = self
                .secrets
                .secret(msg.app_id)
                .ok_or_else(|| unknown_app(msg.app_id))?;
            let (digest, challenge) = DigestServer::new(&secret, random);
            Ok((msg.app_id.to_owned(), digest, challenge))
        })();
        match result {
            Ok((app_id, digest, challenge)) => (
                State::Sasl { app_id, digest },
                Ok(AuthStep::Continue(Bytes::from(challenge))),
            ),
            Err(e) => (State::Failed, Err(e)),
        }
    }
}

impl std::fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Start => "start",
            State::Sasl { .. } => "sasl",
            State::Done => "done",
            State::Failed => "failed",
        };
        f.debug_struct("ServerAuth")
            .field("version", &self.version)
            .field("cipher", &self.cipher)
            .field("sasl_fallback", &self.sasl_fallback)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// The second SASL message: the digest-response. The connection's app id stays the one of
/// the first message, as in Spark's `SaslRpcHandler`.
fn sasl_finish(
    app_id: String,
    digest: &DigestServer,
    payload: &[u8],
) -> (State, Result<AuthStep, Error>) {
    let result = SaslMessage::decode(payload).and_then(|msg| digest.verify(msg.token));
    match result {
        Ok(rspauth) => (
            State::Done,
            Ok(AuthStep::Done {
                reply: Bytes::from(rspauth),
                app_id,
                transport: None,
            }),
        ),
        Err(e) => (State::Failed, Err(e)),
    }
}

fn unknown_app(app_id: &str) -> Error {
    Error::UnknownApp {
        app: truncate_peer_text(app_id),
    }
}
