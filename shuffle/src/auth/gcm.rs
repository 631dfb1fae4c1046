//! The AES-GCM transport (protocol §6.4; Spark's `GcmTransportCipher` on Tink's
//! `AesGcmHkdfStreaming`), used when both sides set
//! `spark.network.crypto.cipher=AES/GCM/NoPadding`.
//!
//! Every write of a side is one *GCM message*:
//! `i64 BE totalLen` (these 8 bytes included) ‖ header ‖ segments, where
//! header = `u8 headerLen (= 1 + keyLen + 7)` ‖ salt (keyLen random bytes) ‖ noncePrefix (7),
//! the segment key is `HKDF-SHA256(ikm = key, salt, info = i64 BE totalLen, keyLen)`, and
//! segment *i* (plaintext ≤ 32752 bytes) is AES-GCM with nonce
//! `noncePrefix ‖ u32 BE i ‖ u8 last`, no AAD: ciphertext ‖ 16-byte tag, ≤ 32768 bytes.
//!
//! The receiver ([`GcmCipher::open`]) decrypts a segment as soon as it is complete, so at most
//! one segment (32 KiB) of ciphertext is buffered whatever `totalLen` says.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce, Tag};
use bytes::{Buf, BufMut, BytesMut};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::Error;

/// Bytes of the message length prefix.
const LENGTH_BYTES: usize = 8;
/// Bytes of a ciphertext segment (Spark's `CIPHERTEXT_BUFFER_SIZE`).
pub(crate) const SEGMENT_BYTES: usize = 32 * 1024;
/// Bytes of an AES-GCM tag.
const TAG_BYTES: usize = 16;
/// Plaintext bytes of a full segment.
pub(crate) const PLAINTEXT_SEGMENT_BYTES: usize = SEGMENT_BYTES - TAG_BYTES;
/// Bytes of the random nonce prefix in the header.
const NONCE_PREFIX_BYTES: usize = 7;

/// The AES-GCM transport of one authenticated connection.
pub struct GcmCipher {
    key: Zeroizing<Vec<u8>>,
    recv: Recv,
}

/// Where the receiver is within the current incoming message.
enum Recv {
    /// Waiting for the 8-byte length.
    Length,
    /// Waiting for the header of a message of `total` bytes.
    Header { total: u64 },
    /// In the segments: `remaining` ciphertext bytes to go, next segment number `segment`.
    Segments {
        gcm: Box<SegmentCipher>,
        prefix: [u8; NONCE_PREFIX_BYTES],
        segment: u32,
        remaining: u64,
    },
}

enum SegmentCipher {
    Aes128(Aes128Gcm),
    Aes256(Aes256Gcm),
}

// === impl GcmCipher ===

impl GcmCipher {
    /// A transport with the session key (16 or 32 bytes).
    pub(crate) fn new(key: &[u8]) -> Result<Self, Error> {
        if key.len() != 16 && key.len() != 32 {
            return Err(Error::Internal {
                what: "AES-GCM transport key length",
            });
        }
        Ok(GcmCipher {
            key: Zeroizing::new(key.to_vec()),
            recv: Recv::Length,
        })
    }

    fn header_len(&self) -> usize {
        1 + self.key.len() + NONCE_PREFIX_BYTES
    }

    /// Appends to `out` one GCM message carrying `plaintext`. `random` supplies the salt and
    /// nonce prefix of the message.
    pub fn seal(
        &self,
        plaintext: &[u8],
        random: &mut dyn FnMut(&mut [u8]),
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        let header_len = self.header_len();
        let full = plaintext.len() / PLAINTEXT_SEGMENT_BYTES;
        let partial = plaintext.len() % PLAINTEXT_SEGMENT_BYTES;
        let total = LENGTH_BYTES
            + header_len
            + full * SEGMENT_BYTES
            + if partial > 0 { partial + TAG_BYTES } else { 0 };
        let mut salt = Zeroizing::new(vec![0u8; self.key.len()]);
        random(&mut salt);
        let mut prefix = [0u8; NONCE_PREFIX_BYTES];
        random(&mut prefix);
        let total_field = u64::try_from(total).map_err(|_| Error::Internal {
            what: "GCM message length",
        })?;
        let gcm = self.segment_cipher(&salt, total_field)?;

        out.reserve(total);
        out.put_u64(total_field);
        out.put_u8(u8::try_from(header_len).unwrap_or(u8::MAX));
        out.put_slice(&salt);
        out.put_slice(&prefix);
        let segments = plaintext.chunks(PLAINTEXT_SEGMENT_BYTES);
        let count = segments.len();
        for (i, chunk) in segments.enumerate() {
            let index = u32::try_from(i).map_err(|_| Error::Internal {
                what: "GCM segment count",
            })?;
            let nonce = segment_nonce(&prefix, index, i + 1 == count);
            let start = out.len();
            out.put_slice(chunk);
            let body = out.get_mut(start..).unwrap_or_default();
            let tag = gcm.seal(&nonce, body)?;
            out.put_slice(&tag);
        }
        Ok(())
    }

    /// Decrypts what it can of `wire` (bytes received, possibly several messages or part of
    /// one) and appends the plaintext to `plaintext`; consumed bytes are removed from `wire`,
    /// an incomplete segment stays there until more bytes arrive.
    ///
    /// # Errors
    /// [`Error::Transport`] for a malformed message or a segment that does not authenticate;
    /// the connection must be closed.
    pub fn open(&mut self, wire: &mut BytesMut, plaintext: &mut BytesMut) -> Result<(), Error> {
        loop {
            match &mut self.recv {
                Recv::Length => {
                    if wire.len() < LENGTH_BYTES {
                        return Ok(());
                    }
                    let total = wire.get_u64();
                    let min = (LENGTH_BYTES + self.header_len()) as u64;
                    if total < min {
                        return Err(transport("GCM message shorter than its header"));
                    }
                    self.recv = Recv::Header { total };
                }
                Recv::Header { total } => {
                    let total = *total;
                    let header_len = self.header_len();
                    let Some(header) = wire.get(..header_len) else {
                        return Ok(());
                    };
                    if usize::from(header.first().copied().unwrap_or(0)) != header_len {
                        return Err(transport("GCM header length byte is wrong"));
                    }
                    let key_len = self.key.len();
                    let salt = header.get(1..1 + key_len).unwrap_or_default();
                    let prefix: [u8; NONCE_PREFIX_BYTES] = header
                        .get(1 + key_len..)
                        .and_then(|p| p.try_into().ok())
                        .ok_or(Error::Internal {
                            what: "GCM header layout",
                        })?;
                    let gcm = Box::new(self.segment_cipher(salt, total)?);
                    wire.advance(header_len);
                    self.recv = Recv::Segments {
                        gcm,
                        prefix,
                        segment: 0,
                        remaining: total - (LENGTH_BYTES + header_len) as u64,
                    };
                }
                Recv::Segments {
                    gcm,
                    prefix,
                    segment,
                    remaining,
                } => {
                    if *remaining == 0 {
                        self.recv = Recv::Length;
                        continue;
                    }
                    let last = *remaining <= SEGMENT_BYTES as u64;
                    // `remaining` ≤ SEGMENT_BYTES here when `last`, so this fits in usize.
                    let len = if last {
                        usize::try_from(*remaining).unwrap_or(SEGMENT_BYTES)
                    } else {
                        SEGMENT_BYTES
                    };
                    if len < TAG_BYTES {
                        return Err(transport("GCM segment shorter than its tag"));
                    }
                    if wire.len() < len {
                        return Ok(());
                    }
                    let nonce = segment_nonce(prefix, *segment, last);
                    let mut seg = wire.split_to(len);
                    let (body, tag) = seg.split_at_mut(len - TAG_BYTES);
                    gcm.open(&nonce, body, tag)?;
                    seg.truncate(len - TAG_BYTES);
                    plaintext.unsplit(seg);
                    *remaining -= len as u64;
                    *segment = segment
                        .checked_add(1)
                        .ok_or_else(|| transport("too many GCM segments"))?;
                }
            }
        }
    }

    /// The cipher of the segments of a message with this salt and total length.
    fn segment_cipher(&self, salt: &[u8], total: u64) -> Result<SegmentCipher, Error> {
        let mut key = Zeroizing::new(vec![0u8; self.key.len()]);
        Hkdf::<Sha256>::new(Some(salt), &self.key)
            .expand(&total.to_be_bytes(), &mut key)
            .map_err(|_| Error::Internal {
                what: "HKDF expand",
            })?;
        let bad = |_| Error::Internal {
            what: "AES-GCM key setup",
        };
        Ok(if key.len() == 16 {
            SegmentCipher::Aes128(Aes128Gcm::new_from_slice(&key).map_err(bad)?)
        } else {
            SegmentCipher::Aes256(Aes256Gcm::new_from_slice(&key).map_err(bad)?)
        })
    }
}

impl std::fmt::Debug for GcmCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GcmCipher(AES-{}-GCM)", self.key.len() * 8)
    }
}

// === impl SegmentCipher ===

impl SegmentCipher {
    fn seal(&self, nonce: &[u8; 12], body: &mut [u8]) -> Result<[u8; TAG_BYTES], Error> {
        let nonce = Nonce::from(*nonce);
        let tag = match self {
            SegmentCipher::Aes128(c) => c.encrypt_inout_detached(&nonce, &[], body.into()),
            SegmentCipher::Aes256(c) => c.encrypt_inout_detached(&nonce, &[], body.into()),
        }
        .map_err(|_| Error::Internal {
            what: "AES-GCM encrypt",
        })?;
        Ok(tag.into())
    }

    fn open(&self, nonce: &[u8; 12], body: &mut [u8], tag: &[u8]) -> Result<(), Error> {
        let nonce = Nonce::from(*nonce);
        let tag = Tag::try_from(tag).map_err(|_| transport("GCM tag length"))?;
        match self {
            SegmentCipher::Aes128(c) => c.decrypt_inout_detached(&nonce, &[], body.into(), &tag),
            SegmentCipher::Aes256(c) => c.decrypt_inout_detached(&nonce, &[], body.into(), &tag),
        }
        .map_err(|_| transport("a GCM segment does not authenticate"))
    }
}

/// `noncePrefix ‖ u32 BE segment ‖ u8 last`.
fn segment_nonce(prefix: &[u8; NONCE_PREFIX_BYTES], segment: u32, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..NONCE_PREFIX_BYTES].copy_from_slice(prefix);
    nonce[NONCE_PREFIX_BYTES..11].copy_from_slice(&segment.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

fn transport(reason: &'static str) -> Error {
    Error::Transport { reason }
}
