//! The transport cipher installed after a successful AuthEngine handshake (protocol §6.3,
//! Spark's `CtrTransportCipher`): one continuous AES-CTR keystream per direction (128-bit
//! big-endian counter starting at the IV, carrying across all 128 bits) over every byte after
//! the server's auth reply, across frame boundaries. No framing, no MAC.
//!
//! The server encrypts what it sends with `ivA` ("inputIv") and decrypts what it receives
//! with `ivB` ("outputIv"); AES-256 with authEngineVersion 1 (the raw X25519 shared secret as
//! key), AES-128 with version 2.

use std::fmt;

use aes::{Aes128, Aes256};
use ctr::Ctr128BE;
use ctr::cipher::{KeyIvInit, StreamCipher};

use super::Error;

/// Bytes of an AES block, and of the CTR IVs.
pub(crate) const IV_BYTES: usize = 16;

/// The AES-CTR pair of one authenticated connection. Not `Clone`: each keystream position
/// must be used once.
pub struct TransportCipher {
    /// Server → client, client → server (boxed: AES key schedules are large).
    pair: Box<(Ctr, Ctr)>,
}

enum Ctr {
    Aes128(Ctr128BE<Aes128>),
    Aes256(Ctr128BE<Aes256>),
}

// === impl TransportCipher ===

impl TransportCipher {
    /// A cipher pair with `key` (16 or 32 bytes), encrypting outgoing bytes from `out_iv` and
    /// decrypting incoming bytes from `in_iv`. The server passes `out_iv = ivA`,
    /// `in_iv = ivB`; a client the reverse.
    pub(crate) fn ctr(
        key: &[u8],
        out_iv: &[u8; IV_BYTES],
        in_iv: &[u8; IV_BYTES],
    ) -> Result<Self, Error> {
        Ok(TransportCipher {
            pair: Box::new((Ctr::new(key, out_iv)?, Ctr::new(key, in_iv)?)),
        })
    }

    /// Encrypts bytes this side sends (server → client), in place. Calls continue one
    /// keystream: encrypting `a` then `b` equals encrypting `a ‖ b`.
    pub fn encrypt(&mut self, buf: &mut [u8]) {
        self.pair.0.apply(buf);
    }

    /// Decrypts bytes this side receives (client → server), in place, continuing one
    /// keystream across calls like [`TransportCipher::encrypt`].
    pub fn decrypt(&mut self, buf: &mut [u8]) {
        self.pair.1.apply(buf);
    }
}

impl fmt::Debug for TransportCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = match self.pair.0 {
            Ctr::Aes128(_) => 128,
            Ctr::Aes256(_) => 256,
        };
        write!(f, "TransportCipher(AES-{bits}-CTR)")
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
