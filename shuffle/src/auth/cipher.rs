//! The transport cipher installed after a successful AuthEngine handshake, as configured by
//! `spark.network.crypto.cipher` on both sides (the handshake does not say which):
//!
//! - [`CtrCipher`] (`AES/CTR/NoPadding`, Spark's default; protocol §6.3, `CtrTransportCipher`):
//!   one continuous AES-CTR keystream per direction (128-bit big-endian counter starting at
//!   the IV, carrying across all 128 bits) over every byte after the server's auth reply,
//!   across frame boundaries. No framing, no MAC. The server encrypts what it sends with `ivA`
//!   ("inputIv") and decrypts what it receives with `ivB` ("outputIv").
//! - [`GcmCipher`] (`AES/GCM/NoPadding`; §6.4): every write is one authenticated message.
//!
//! The key is AES-256 with authEngineVersion 1 (the raw X25519 shared secret), AES-128 with
//! version 2.

use std::fmt;

use aes::{Aes128, Aes256};
use bytes::BytesMut;
use ctr::Ctr128BE;
use ctr::cipher::{KeyIvInit, StreamCipher};

use super::Error;
use super::gcm::GcmCipher;

/// Bytes of an AES block, and of the CTR IVs.
pub(crate) const IV_BYTES: usize = 16;

/// The cipher spec `spark.network.crypto.cipher` names; both sides must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CipherMode {
    /// `AES/CTR/NoPadding` (Spark's default).
    #[default]
    Ctr,
    /// `AES/GCM/NoPadding`.
    Gcm,
}

impl CipherMode {
    /// The mode for Spark's configuration value (case-insensitive, as Spark compares it).
    pub fn from_spark_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("AES/CTR/NoPadding") {
            Some(CipherMode::Ctr)
        } else if name.eq_ignore_ascii_case("AES/GCM/NoPadding") {
            Some(CipherMode::Gcm)
        } else {
            None
        }
    }
}

/// The transport protection of one connection after AuthEngine: every byte this side sends
/// goes through [`TransportCipher::seal`], every byte received through
/// [`TransportCipher::open`]. Not `Clone`: keystreams must not be reused.
#[derive(Debug)]
pub enum TransportCipher {
    /// AES-CTR stream: output is exactly as long as input.
    Ctr(CtrCipher),
    /// AES-GCM messages.
    Gcm(GcmCipher),
}

// === impl TransportCipher ===

impl TransportCipher {
    /// The cipher of `mode` with the session `key`; CTR encrypts outgoing bytes from `out_iv`
    /// and decrypts incoming ones from `in_iv` (GCM uses no IVs).
    pub(crate) fn new(
        mode: CipherMode,
        key: &[u8],
        out_iv: &[u8; IV_BYTES],
        in_iv: &[u8; IV_BYTES],
    ) -> Result<Self, Error> {
        Ok(match mode {
            CipherMode::Ctr => TransportCipher::Ctr(CtrCipher::new(key, out_iv, in_iv)?),
            CipherMode::Gcm => TransportCipher::Gcm(GcmCipher::new(key)?),
        })
    }

    /// Appends to `out` the wire bytes that carry `plaintext` (CTR: the same length; GCM: one
    /// message, whose salt and nonce prefix come from `random`).
    ///
    /// # Errors
    /// Only [`Error::Internal`].
    pub fn seal(
        &mut self,
        plaintext: &[u8],
        random: &mut dyn FnMut(&mut [u8]),
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        match self {
            TransportCipher::Ctr(c) => {
                let start = out.len();
                out.extend_from_slice(plaintext);
                c.encrypt(out.get_mut(start..).unwrap_or_default());
                Ok(())
            }
            TransportCipher::Gcm(g) => g.seal(plaintext, random, out),
        }
    }

    /// Moves what can be decrypted of `wire` (bytes as received) to the end of `plaintext`.
    /// CTR consumes everything; GCM leaves an incomplete segment in `wire`.
    ///
    /// # Errors
    /// [`Error::Transport`] (GCM only): malformed or forged input; close the connection.
    pub fn open(&mut self, wire: &mut BytesMut, plaintext: &mut BytesMut) -> Result<(), Error> {
        match self {
            TransportCipher::Ctr(c) => {
                let mut data = wire.split();
                c.decrypt(&mut data);
                plaintext.unsplit(data);
                Ok(())
            }
            TransportCipher::Gcm(g) => g.open(wire, plaintext),
        }
    }
}

/// The AES-CTR pair of one authenticated connection. Not `Clone`: each keystream position
/// must be used once.
pub struct CtrCipher {
    /// Server → client, client → server (boxed: AES key schedules are large).
    pair: Box<(Ctr, Ctr)>,
}

enum Ctr {
    Aes128(Ctr128BE<Aes128>),
    Aes256(Ctr128BE<Aes256>),
}

// === impl CtrCipher ===

impl CtrCipher {
    /// A cipher pair with `key` (16 or 32 bytes), encrypting outgoing bytes from `out_iv` and
    /// decrypting incoming bytes from `in_iv`. The server passes `out_iv = ivA`,
    /// `in_iv = ivB`; a client the reverse.
    pub(crate) fn new(
        key: &[u8],
        out_iv: &[u8; IV_BYTES],
        in_iv: &[u8; IV_BYTES],
    ) -> Result<Self, Error> {
        Ok(CtrCipher {
            pair: Box::new((Ctr::new(key, out_iv)?, Ctr::new(key, in_iv)?)),
        })
    }

    /// Encrypts bytes this side sends (server → client), in place. Calls continue one
    /// keystream: encrypting `a` then `b` equals encrypting `a ‖ b`.
    pub fn encrypt(&mut self, buf: &mut [u8]) {
        self.pair.0.apply(buf);
    }

    /// Decrypts bytes this side receives (client → server), in place, continuing one
    /// keystream across calls like [`CtrCipher::encrypt`].
    pub fn decrypt(&mut self, buf: &mut [u8]) {
        self.pair.1.apply(buf);
    }
}

impl fmt::Debug for CtrCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = match self.pair.0 {
            Ctr::Aes128(_) => 128,
            Ctr::Aes256(_) => 256,
        };
        write!(f, "CtrCipher(AES-{bits}-CTR)")
    }
}

// === impl Ctr ===

impl Ctr {
    fn new(key: &[u8], iv: &[u8; IV_BYTES]) -> Result<Self, Error> {
        let bad_key = |_| Error::Internal {
            what: "AES-CTR key setup",
        };
        match key.len() {
            16 => Ok(Ctr::Aes128(
                Ctr128BE::<Aes128>::new_from_slices(key, iv).map_err(bad_key)?,
            )),
            32 => Ok(Ctr::Aes256(
                Ctr128BE::<Aes256>::new_from_slices(key, iv).map_err(bad_key)?,
            )),
            _ => Err(Error::Internal {
                what: "AES-CTR key length",
            }),
        }
    }

    fn apply(&mut self, buf: &mut [u8]) {
        // A 128-bit counter starting at 0 over the IV never runs out (`remaining` is
        // u128::MAX blocks), so `apply_keystream` cannot hit its end-of-keystream panic.
        match self {
            Ctr::Aes128(c) => c.apply_keystream(buf),
            Ctr::Aes256(c) => c.apply_keystream(buf),
        }
    }
}
