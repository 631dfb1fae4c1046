//! Spark's AuthEngine handshake (protocol §6.2; `NC/crypto/AuthEngine.java`): both sides
//! send their ephemeral X25519 public key AES-GCM-encrypted under a key derived (HKDF-SHA256)
//! from the pre-shared secret, a fresh salt, the app id and the transcript so far; the session
//! key and IVs come from the X25519 shared secret and the transcript `encode(C) ‖ encode(S)`.
//!
//! The server side ([`respond`]) is what the daemon runs; [`ClientAuth`] is the client side,
//! for tests and for kshuffle's own clients.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::cipher::IV_BYTES;
use super::message::AuthMessage;
use super::server::AuthEngineVersion;
use super::{CipherMode, Error, Secret, TransportCipher};

/// Bytes of the AES-GCM key-encrypting keys, of the salts, and of the version-2 session key
/// (`AES_GCM_KEY_SIZE_BYTES`).
const KEK_BYTES: usize = 16;
/// Bytes of the random salts sent in clear.
const SALT_BYTES: usize = 16;
/// Bytes of the AES-GCM nonce that prefixes the ciphertext (Tink `AesGcmJce`).
const GCM_NONCE_BYTES: usize = 12;
/// Bytes of the AES-GCM tag that ends the ciphertext.
const GCM_TAG_BYTES: usize = 16;
/// Bytes of an X25519 key.
const X25519_BYTES: usize = 32;

/// HKDF info of the version-2 session key.
const DERIVED_KEY_INFO: &[u8] = b"derivedKey";
/// HKDF info of `ivA` (server → client).
const INPUT_IV_INFO: &[u8] = b"inputIv";
/// HKDF info of `ivB` (client → server).
const OUTPUT_IV_INFO: &[u8] = b"outputIv";

/// The server's answer to a client challenge: the encoded response `S` and the cipher pair to
/// install after sending it.
pub(crate) struct Response {
    pub(crate) reply: Vec<u8>,
    pub(crate) cipher: TransportCipher,
}

/// Answers the challenge `challenge` (already decoded from `payload`, whose bytes are exactly
/// its encoding) for an application whose secret is `secret`.
///
/// `random` supplies, in this order, the server's X25519 private key (32 bytes), the salt
/// (16) and the AES-GCM nonce (12).
///
/// # Errors
/// [`Error::Failed`] when the challenge does not decrypt under `secret` (wrong secret or a
/// tampered message) or carries an unusable public key.
pub(crate) fn respond(
    secret: &Secret,
    payload: &[u8],
    challenge: &AuthMessage<'_>,
    version: AuthEngineVersion,
    mode: CipherMode,
    random: &mut dyn FnMut(&mut [u8]),
) -> Result<Response, Error> {
    let client_public = open_public_key(secret, challenge, &[])?;

    let (server_secret, server_public) = keypair(random);
    // The transcript of the response is the challenge as encoded, tag byte included.
    let reply = seal_public_key(secret, challenge.app_id, &server_public, payload, random)?;

    let shared = agree(&server_secret, client_public)?;
    let mut transcript = Vec::with_capacity(payload.len() + reply.len());
    transcript.extend_from_slice(payload);
    transcript.extend_from_slice(&reply);
    let keys = SessionKeys::derive(&shared, &transcript, version)?;
    let cipher = TransportCipher::new(mode, &keys.key, &keys.iv_a, &keys.iv_b)?;
    Ok(Response { reply, cipher })
}

/// The client side of the handshake, between sending the challenge and reading the response.
pub struct ClientAuth {
    app_id: String,
    secret: Secret,
    version: AuthEngineVersion,
    mode: CipherMode,
    private: StaticSecret,
    challenge: Vec<u8>,
}

// === impl ClientAuth ===

impl ClientAuth {
    /// Starts a handshake for `app_id`: returns the state and the challenge payload `C` to
    /// send in an `RpcRequest`. `random` supplies the X25519 private key (32 bytes), the salt
    /// (16) and the AES-GCM nonce (12), in that order.
    ///
    /// # Errors
    /// [`Error::Internal`] only if AES-GCM refuses to encrypt (it does not for these sizes).
    pub fn challenge(
        app_id: &str,
        secret: Secret,
        version: AuthEngineVersion,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(Self, Vec<u8>), Error> {
        let (private, public) = keypair(random);
        let challenge = seal_public_key(&secret, app_id, &public, &[], random)?;
        let state = ClientAuth {
            app_id: app_id.to_owned(),
            secret,
            version,
            mode: CipherMode::Ctr,
            private,
            challenge: challenge.clone(),
        };
        Ok((state, challenge))
    }

    /// The transport cipher both sides are configured with (default [`CipherMode::Ctr`]).
    pub fn with_cipher(mut self, mode: CipherMode) -> Self {
        self.mode = mode;
        self
    }

    /// Checks the server's response payload `S` and returns the client's transport cipher:
    /// it seals client → server bytes and opens the others.
    ///
    /// # Errors
    /// [`Error::BadMessage`] if `S` does not parse, [`Error::Failed`] if it is for another
    /// app or does not decrypt (the server has another secret).
    pub fn finish(self, response: &[u8]) -> Result<TransportCipher, Error> {
        let msg = AuthMessage::decode(response)?;
        if msg.app_id != self.app_id {
            return Err(Error::Failed {
                reason: "The response is for another application.",
            });
        }
        let server_public = open_public_key(&self.secret, &msg, &self.challenge)?;
        let shared = agree(&self.private, server_public)?;
        let mut transcript = self.challenge;
        transcript.extend_from_slice(response);
        let keys = SessionKeys::derive(&shared, &transcript, self.version)?;
        TransportCipher::new(self.mode, &keys.key, &keys.iv_b, &keys.iv_a)
    }
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("app_id", &self.app_id)
            .field("version", &self.version)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// The session key and IVs both sides derive.
pub(crate) struct SessionKeys {
    /// 32 bytes (version 1: the raw shared secret) or 16 (version 2).
    pub(crate) key: Zeroizing<Vec<u8>>,
    /// Server → client IV ("inputIv").
    pub(crate) iv_a: [u8; IV_BYTES],
    /// Client → server IV ("outputIv").
    pub(crate) iv_b: [u8; IV_BYTES],
}

// === impl SessionKeys ===

impl SessionKeys {
    /// Derives the keys from the X25519 shared secret and the transcript `C ‖ S`.
    pub(crate) fn derive(
        shared: &[u8; X25519_BYTES],
        transcript: &[u8],
        version: AuthEngineVersion,
    ) -> Result<Self, Error> {
        let hkdf = Hkdf::<Sha256>::new(Some(transcript), shared);
        let expand = |info: &[u8], out: &mut [u8]| {
            hkdf.expand(info, out).map_err(|_| Error::Internal {
                what: "HKDF expand",
            })
        };
        let key = match version {
            AuthEngineVersion::V1 => Zeroizing::new(shared.to_vec()),
            AuthEngineVersion::V2 => {
                let mut key = Zeroizing::new(vec![0u8; KEK_BYTES]);
                expand(DERIVED_KEY_INFO, &mut key)?;
                key
            }
        };
        let mut iv_a = [0u8; IV_BYTES];
        let mut iv_b = [0u8; IV_BYTES];
        expand(INPUT_IV_INFO, &mut iv_a)?;
        expand(OUTPUT_IV_INFO, &mut iv_b)?;
        Ok(SessionKeys { key, iv_a, iv_b })
    }
}

/// A fresh X25519 key pair from 32 random bytes (clamped when used, as Tink clamps them).
fn keypair(random: &mut dyn FnMut(&mut [u8])) -> (StaticSecret, PublicKey) {
    let mut bytes = Zeroizing::new([0u8; X25519_BYTES]);
    random(bytes.as_mut());
    let secret = StaticSecret::from(*bytes);
    let public = PublicKey::from(&secret);
    (secret, public)
}

/// X25519 with the peer's public key; refuses low-order keys (an all-zero shared secret), as
/// Tink's `X25519.computeSharedSecret` does.
fn agree(
    own: &StaticSecret,
    peer: [u8; X25519_BYTES],
) -> Result<Zeroizing<[u8; X25519_BYTES]>, Error> {
    let shared = own.diffie_hellman(&PublicKey::from(peer));
    if !shared.was_contributory() {
        return Err(Error::Failed {
            reason: "The peer's public key is not acceptable.",
        });
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// The key-encrypting key `HKDF(secret, salt, aad, 16)` and the AAD `appId ‖ salt ‖
/// transcript`.
pub(crate) fn derive_kek(
    secret: &Secret,
    app_id: &str,
    salt: &[u8],
    transcript: &[u8],
) -> Result<(Zeroizing<[u8; KEK_BYTES]>, Vec<u8>), Error> {
    let mut aad = Vec::with_capacity(app_id.len() + salt.len() + transcript.len());
    aad.extend_from_slice(app_id.as_bytes());
    aad.extend_from_slice(salt);
    aad.extend_from_slice(transcript);
    let mut key = Zeroizing::new([0u8; KEK_BYTES]);
    Hkdf::<Sha256>::new(Some(salt), secret.as_bytes())
        .expand(&aad, key.as_mut())
        .map_err(|_| Error::Internal {
            what: "HKDF expand",
        })?;
    Ok((key, aad))
}

/// [`derive_kek`] as an AES-GCM instance, and the AAD.
fn kek(
    secret: &Secret,
    app_id: &str,
    salt: &[u8],
    transcript: &[u8],
) -> Result<(Aes128Gcm, Vec<u8>), Error> {
    let (key, aad) = derive_kek(secret, app_id, salt, transcript)?;
    let gcm = Aes128Gcm::new_from_slice(key.as_ref()).map_err(|_| Error::Internal {
        what: "AES-GCM key setup",
    })?;
    Ok((gcm, aad))
}

/// An encoded `AuthMessage(appId, salt, AESGCM(kek).encrypt(public, aad))` with a fresh salt
/// and nonce from `random`.
fn seal_public_key(
    secret: &Secret,
    app_id: &str,
    public: &PublicKey,
    transcript: &[u8],
    random: &mut dyn FnMut(&mut [u8]),
) -> Result<Vec<u8>, Error> {
    let mut salt = [0u8; SALT_BYTES];
    random(&mut salt);
    let mut nonce = [0u8; GCM_NONCE_BYTES];
    random(&mut nonce);
    let (gcm, aad) = kek(secret, app_id, &salt, transcript)?;
    let sealed = gcm
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: public.as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| Error::Internal {
            what: "AES-GCM encrypt",
        })?;
    let mut ciphertext = Vec::with_capacity(GCM_NONCE_BYTES + sealed.len());
    ciphertext.extend_from_slice(&nonce);
    ciphertext.extend_from_slice(&sealed);
    let mut out = Vec::new();
    AuthMessage {
        app_id,
        salt: &salt,
        ciphertext: &ciphertext,
    }
    .encode(&mut out);
    Ok(out)
}

/// The X25519 public key inside `msg` (`nonce ‖ ciphertext ‖ tag`), decrypted with the key
/// derived from `secret`, `msg.salt`, `msg.app_id` and `transcript`.
pub(crate) fn open_public_key(
    secret: &Secret,
    msg: &AuthMessage<'_>,
    transcript: &[u8],
) -> Result<[u8; X25519_BYTES], Error> {
    const NOT_DECRYPTED: Error = Error::Failed {
        reason: "The key exchange message does not decrypt: the client and this server do \
                 not share the same secret for this application, or the message was altered.",
    };
    let Some((nonce, sealed)) = msg.ciphertext.split_first_chunk::<GCM_NONCE_BYTES>() else {
        return Err(NOT_DECRYPTED);
    };
    if sealed.len() < GCM_TAG_BYTES {
        return Err(NOT_DECRYPTED);
    }
    let (gcm, aad) = kek(secret, msg.app_id, msg.salt, transcript)?;
    let plain = Zeroizing::new(
        gcm.decrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| NOT_DECRYPTED)?,
    );
    <[u8; X25519_BYTES]>::try_from(plain.as_slice()).map_err(|_| Error::Failed {
        reason: "The key exchange message does not hold a 32-byte X25519 public key.",
    })
}
