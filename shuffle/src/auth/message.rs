//! The two auth message layouts (protocol §6.2, §6.5), parsed as borrowed slices.
//!
//! - `AuthMessage`: `u8 0xFB`, String appId, byte[] salt, byte[] ciphertext;
//! - `SaslMessage`: `u8 0xEA`, String appId, `i32` token length (ignored by Spark: the token
//!   is the rest of the payload), token.
//!
//! String / byte[] = `i32` BE length + bytes. Every length is checked against the bytes that
//! remain before it is used; nothing is allocated while parsing.

use super::error::truncate_peer_text;
use super::{AUTH_MESSAGE_TAG, Error, SASL_MESSAGE_TAG};

/// Longest app id accepted. Spark's are a few dozen bytes (`spark-<hex>`, `app-<date>-<n>`,
/// `application_<ts>_<n>`).
pub(crate) const MAX_APP_ID_BYTES: usize = 1024;

/// An AuthEngine message (challenge or response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AuthMessage<'a> {
    pub(crate) app_id: &'a str,
    pub(crate) salt: &'a [u8],
    pub(crate) ciphertext: &'a [u8],
}

/// A SASL message: the claimed app id and the SASL token it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SaslMessage<'a> {
    pub(crate) app_id: &'a str,
    pub(crate) token: &'a [u8],
}

// === impl AuthMessage ===

impl<'a> AuthMessage<'a> {
    /// Parses a whole payload. The tag must be `0xFB` and nothing may follow the ciphertext.
    pub(crate) fn decode(payload: &'a [u8]) -> Result<Self, Error> {
        const WHAT: &str = "AuthMessage";
        let mut r = Cursor(payload);
        if r.u8(WHAT)? != AUTH_MESSAGE_TAG {
            return Err(Error::bad(WHAT, "the tag byte is not 0xFB"));
        }
        let app_id = r.string(WHAT)?;
        let salt = r.bytes(WHAT, "salt")?;
        let ciphertext = r.bytes(WHAT, "ciphertext")?;
        if !r.0.is_empty() {
            return Err(Error::bad(
                WHAT,
                format!("{} unexpected bytes after the ciphertext", r.0.len()),
            ));
        }
        Ok(AuthMessage {
            app_id,
            salt,
            ciphertext,
        })
    }

    /// Bytes of [`AuthMessage::encode`]'s output.
    pub(crate) fn encoded_len(&self) -> usize {
        1 + 4 + self.app_id.len() + 4 + self.salt.len() + 4 + self.ciphertext.len()
    }

    /// Appends the encoding to `out`.
    ///
    /// Lengths are written as `i32`; callers only encode their own messages (short fields).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(AUTH_MESSAGE_TAG);
        for field in [self.app_id.as_bytes(), self.salt, self.ciphertext] {
            out.extend_from_slice(&len_i32(field).to_be_bytes());
            out.extend_from_slice(field);
        }
    }
}

// === impl SaslMessage ===

impl<'a> SaslMessage<'a> {
    /// Parses a whole payload: tag `0xEA`, app id, the (ignored) token length, the token.
    pub(crate) fn decode(payload: &'a [u8]) -> Result<Self, Error> {
        const WHAT: &str = "SaslMessage";
        let mut r = Cursor(payload);
        if payload.first() != Some(&SASL_MESSAGE_TAG) {
            return Err(Error::NotSasl {
                tag: payload.first().copied(),
            });
        }
        r.u8(WHAT)?;
        let app_id = r.string(WHAT)?;
        // Spark writes the body size here but reads the body as "the rest of the message".
        r.take(4, WHAT, "token length")?;
        Ok(SaslMessage { app_id, token: r.0 })
    }

    /// The encoding, as Spark's client sends it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![SASL_MESSAGE_TAG];
        out.extend_from_slice(&len_i32(self.app_id.as_bytes()).to_be_bytes());
        out.extend_from_slice(self.app_id.as_bytes());
        out.extend_from_slice(&len_i32(self.token).to_be_bytes());
        out.extend_from_slice(self.token);
        out
    }
}

/// `field.len()` as Java's `int` (saturating; our own fields are far shorter).
fn len_i32(field: &[u8]) -> i32 {
    i32::try_from(field.len()).unwrap_or(i32::MAX)
}

/// A checked big-endian read position.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(
        &mut self,
        n: usize,
        what: &'static str,
        field: &'static str,
    ) -> Result<&'a [u8], Error> {
        let Some((head, tail)) = self.0.split_at_checked(n) else {
            return Err(Error::bad(
                what,
                format!(
                    "truncated {field}: needs {n} bytes but only {} remain",
                    self.0.len()
                ),
            ));
        };
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        match self.take(1, what, "tag")? {
            [b] => Ok(*b),
            _ => Err(Error::bad(what, "empty message")),
        }
    }

    fn len(&mut self, what: &'static str, field: &'static str) -> Result<usize, Error> {
        let raw = self.take(4, what, field)?;
        let len = i32::from_be_bytes(raw.try_into().unwrap_or([0xFF; 4]));
        usize::try_from(len).map_err(|_| Error::bad(what, format!("negative {field} length {len}")))
    }

    fn bytes(&mut self, what: &'static str, field: &'static str) -> Result<&'a [u8], Error> {
        let len = self.len(what, field)?;
        self.take(len, what, field)
    }

    fn string(&mut self, what: &'static str) -> Result<&'a str, Error> {
        let raw = self.bytes(what, "app id")?;
        if raw.len() > MAX_APP_ID_BYTES {
            return Err(Error::bad(
                what,
                format!(
                    "app id of {} bytes exceeds the limit of {MAX_APP_ID_BYTES}",
                    raw.len()
                ),
            ));
        }
        std::str::from_utf8(raw).map_err(|_| {
            Error::bad(
                what,
                format!(
                    "app id is not UTF-8: '{}'",
                    truncate_peer_text(&String::from_utf8_lossy(raw))
                ),
            )
        })
    }
}
