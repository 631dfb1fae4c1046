//! The server side of SASL DIGEST-MD5 (RFC 2831) as Spark uses it (protocol §6.5;
//! `NC/sasl/SparkSaslServer.java` on top of the JDK's DIGEST-MD5 server): realm `default`,
//! user `base64("sparkSaslUser")`, password `base64(secret)` (Netty's base64, which breaks
//! lines every 76 characters), algorithm `md5-sess`, and QOP `auth` only: `auth-conf` and
//! `auth-int` need SASL wrapping of every later byte, which we do not implement, so they are
//! refused with [`Error::UnsupportedQop`].
//!
//! Exchange: the client's first token is empty → [`DigestServer::new`] makes the challenge →
//! the client's digest-response → [`DigestServer::verify`] checks it and returns
//! `rspauth=<hex>`, after which the connection is authenticated (no transport protection).

use md5::{Digest, Md5};
use zeroize::Zeroizing;

use super::error::truncate_peer_text;
use super::{Error, Secret};

/// The realm Spark's server and client use (`SparkSaslServer.DEFAULT_REALM`).
pub(crate) const REALM: &str = "default";
/// `base64("sparkSaslUser")`: the user name every Spark client sends.
pub(crate) const SASL_USER: &str = "c3BhcmtTYXNsVXNlcg==";
/// Random bytes in a nonce (the JDK's `RAW_NONCE_SIZE`: 40 base64 characters).
const NONCE_RAW_BYTES: usize = 30;
/// Longest digest-response accepted (RFC 2831 §2.1.2: "less than 4096 bytes").
pub(crate) const MAX_RESPONSE_BYTES: usize = 4096;

/// One DIGEST-MD5 exchange after the challenge was sent.
pub(crate) struct DigestServer {
    nonce: String,
    password: Zeroizing<String>,
}

/// The directives of a digest-response that the server uses.
#[derive(Default)]
struct Response {
    username: Option<String>,
    realm: Option<String>,
    nonce: Option<String>,
    cnonce: Option<String>,
    nc: Option<String>,
    qop: Option<String>,
    digest_uri: Option<String>,
    response: Option<String>,
    authzid: Option<String>,
    charset: Option<String>,
}

// === impl DigestServer ===

impl DigestServer {
    /// A fresh exchange for an application whose secret is `secret`, and the
    /// digest-challenge to send. `random` supplies the 30 bytes of the nonce.
    pub(crate) fn new(secret: &Secret, random: &mut dyn FnMut(&mut [u8])) -> (Self, Vec<u8>) {
        let mut raw = [0u8; NONCE_RAW_BYTES];
        random(&mut raw);
        let nonce = base64(&raw, false);
        let challenge = format!(
            "realm=\"{REALM}\",nonce=\"{nonce}\",qop=\"auth\",charset=utf-8,algorithm=md5-sess"
        );
        let password = Zeroizing::new(base64(secret.as_bytes(), true));
        (DigestServer { nonce, password }, challenge.into_bytes())
    }

    /// Heap bytes this exchange keeps until the response arrives.
    pub(crate) fn retained_bytes(&self) -> usize {
        self.nonce.capacity() + self.password.capacity()
    }

    /// Checks the client's digest-response and returns the server's final token
    /// (`rspauth=<hex>`).
    ///
    /// # Errors
    /// [`Error::UnsupportedQop`] for a QOP other than `auth`; [`Error::Sasl`] for a malformed
    /// response, a wrong nonce, user, realm or nonce count, or a wrong password.
    pub(crate) fn verify(&self, token: &[u8]) -> Result<Vec<u8>, Error> {
        let r = Response::parse(token)?;
        if let Some(charset) = &r.charset
            && !charset.eq_ignore_ascii_case("utf-8")
        {
            return Err(Error::sasl(format!(
                "unsupported charset '{}'",
                truncate_peer_text(charset)
            )));
        }
        let qop = r.qop.as_deref().unwrap_or("auth");
        match qop {
            "auth" => {}
            "auth-conf" | "auth-int" => {
                return Err(Error::UnsupportedQop {
                    qop: qop.to_owned(),
                });
            }
            other => {
                return Err(Error::sasl(format!(
                    "digest response format violation: unknown qop '{}'",
                    truncate_peer_text(other)
                )));
            }
        }
        let username = required(&r.username, "username")?;
        if username != SASL_USER {
            return Err(Error::sasl(
                "digest response format violation: unexpected username \
                 (Spark clients send base64(\"sparkSaslUser\"))",
            ));
        }
        if let Some(authzid) = &r.authzid
            && authzid != username
        {
            return Err(Error::sasl(
                "the authorization id differs from the authentication id",
            ));
        }
        let realm = r.realm.as_deref().unwrap_or("");
        if !realm.is_empty() && realm != REALM {
            return Err(Error::sasl(format!(
                "digest response format violation: unknown realm '{}'",
                truncate_peer_text(realm)
            )));
        }
        let nonce = required(&r.nonce, "nonce")?;
        if nonce != self.nonce {
            return Err(Error::sasl(
                "digest response format violation: mismatched nonce",
            ));
        }
        let nc = required(&r.nc, "nc")?;
        if u32::from_str_radix(nc, 16) != Ok(1) || nc.len() != 8 {
            return Err(Error::sasl("nonce count does not match"));
        }
        let cnonce = required(&r.cnonce, "cnonce")?;
        if cnonce.is_empty() {
            return Err(Error::sasl(
                "digest response format violation: empty cnonce",
            ));
        }
        let digest_uri = required(&r.digest_uri, "digest-uri")?;
        let response = required(&r.response, "response")?;

        let ha1 = hex(&a1_hash(
            username,
            realm,
            &self.password,
            nonce,
            cnonce,
            r.authzid.as_deref(),
        ));
        let expected = response_value(&ha1, nonce, nc, cnonce, qop, "AUTHENTICATE:", digest_uri);
        if !constant_time_eq(expected.as_bytes(), response.as_bytes()) {
            return Err(Error::sasl(
                "digest response format violation: mismatched response \
                 (the client and this server do not share the same secret for this \
                 application)",
            ));
        }
        let rspauth = response_value(&ha1, nonce, nc, cnonce, qop, ":", digest_uri);
        Ok(format!("rspauth={rspauth}").into_bytes())
    }
}

/// `H(A1)` for md5-sess: `H( H(user:realm:password) : nonce : cnonce [: authzid] )`.
pub(crate) fn a1_hash(
    username: &str,
    realm: &str,
    password: &str,
    nonce: &str,
    cnonce: &str,
    authzid: Option<&str>,
) -> [u8; 16] {
    let mut inner = Md5::new();
    for (i, part) in [username, realm, password].iter().enumerate() {
        if i > 0 {
            inner.update(b":");
        }
        inner.update(part.as_bytes());
    }
    let inner = Zeroizing::new(<[u8; 16]>::from(inner.finalize()));
    let mut a1 = Md5::new();
    a1.update(inner.as_ref());
    a1.update(b":");
    a1.update(nonce.as_bytes());
    a1.update(b":");
    a1.update(cnonce.as_bytes());
    if let Some(authzid) = authzid {
        a1.update(b":");
        a1.update(authzid.as_bytes());
    }
    a1.finalize().into()
}

/// `HEX(KD(HEX(H(A1)), nonce:nc:cnonce:qop:HEX(H(A2))))` with `A2 = a2_prefix ‖ digest-uri`
/// (`"AUTHENTICATE:"` for the client's response, `":"` for the server's rspauth).
pub(crate) fn response_value(
    ha1: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    qop: &str,
    a2_prefix: &str,
    digest_uri: &str,
) -> String {
    let mut a2 = Md5::new();
    a2.update(a2_prefix.as_bytes());
    a2.update(digest_uri.as_bytes());
    let ha2 = hex(&a2.finalize().into());
    let mut kd = Md5::new();
    for (i, part) in [ha1, nonce, nc, cnonce, qop, &ha2].iter().enumerate() {
        if i > 0 {
            kd.update(b":");
        }
        kd.update(part.as_bytes());
    }
    hex(&kd.finalize().into())
}

// === impl Response ===

impl Response {
    /// Parses `key=value` directives separated by commas; values are tokens or quoted strings
    /// with backslash escapes (RFC 2831 §7.2). Unknown directives are ignored, repeated ones
    /// refused.
    fn parse(token: &[u8]) -> Result<Self, Error> {
        if token.len() > MAX_RESPONSE_BYTES {
            return Err(Error::sasl(format!(
                "digest response of {} bytes exceeds the limit of {MAX_RESPONSE_BYTES}",
                token.len()
            )));
        }
        let text = std::str::from_utf8(token)
            .map_err(|_| Error::sasl("digest response format violation: not UTF-8"))?;
        let mut r = Response::default();
        for (key, value) in Directives::new(text) {
            let (key, value) = (key?, value?);
            let slot = match key.to_ascii_lowercase().as_str() {
                "username" => &mut r.username,
                "realm" => &mut r.realm,
                "nonce" => &mut r.nonce,
                "cnonce" => &mut r.cnonce,
                "nc" => &mut r.nc,
                "qop" => &mut r.qop,
                "digest-uri" => &mut r.digest_uri,
                "response" => &mut r.response,
                "authzid" => &mut r.authzid,
                "charset" => &mut r.charset,
                _ => continue,
            };
            if slot.is_some() {
                return Err(Error::sasl(format!(
                    "digest response format violation: repeated directive '{}'",
                    truncate_peer_text(key)
                )));
            }
            *slot = Some(value);
        }
        Ok(r)
    }
}

fn required<'a>(value: &'a Option<String>, name: &'static str) -> Result<&'a str, Error> {
    value.as_deref().ok_or_else(|| {
        Error::sasl(format!(
            "digest response format violation: missing directive '{name}'"
        ))
    })
}

/// An iterator of `(key, value)` over a directive list; yields errors for syntax faults and
/// then stops.
pub(crate) struct Directives<'a> {
    rest: &'a str,
    failed: bool,
}

type Directive<'a> = (Result<&'a str, Error>, Result<String, Error>);

impl<'a> Directives<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Directives {
            rest: text,
            failed: false,
        }
    }

    fn fail(&mut self, why: &str) -> Option<Directive<'a>> {
        self.failed = true;
        Some((
            Err(Error::sasl(format!(
                "digest response format violation: {why}"
            ))),
            Ok(String::new()),
        ))
    }
}

impl<'a> Iterator for Directives<'a> {
    type Item = Directive<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        // Skip separators and white space (empty list elements are allowed).
        self.rest = self
            .rest
            .trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        if self.rest.is_empty() {
            return None;
        }
        let Some((key, after)) = self.rest.split_once('=') else {
            return self.fail("a directive has no '='");
        };
        let key = key.trim();
        if key.is_empty() || key.contains([',', '"']) {
            return self.fail("malformed directive name");
        }
        let after = after.trim_start();
        if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, escaped)) => value.push(escaped),
                        None => break,
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let Some(end) = end else {
                return self.fail("unterminated quoted string");
            };
            let tail = quoted.get(end + 1..).unwrap_or_default().trim_start();
            if !(tail.is_empty() || tail.starts_with(',')) {
                return self.fail("text after a quoted string");
            }
            self.rest = tail;
            Some((Ok(key), Ok(value)))
        } else {
            let (value, tail) = after.split_once(',').unwrap_or((after, ""));
            self.rest = tail;
            Some((Ok(key), Ok(value.trim().to_owned())))
        }
    }
}

/// Standard base64 with padding; with `break_lines`, a `\n` after every 76 output characters
/// (not at the end), as Netty's `Base64.encode(ByteBuf)` writes it — which is how Spark turns
/// the secret into the DIGEST-MD5 password.
pub(crate) fn base64(bytes: &[u8], break_lines: bool) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const LINE_CHARS: usize = 76;
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4 + bytes.len() / 57 + 1);
    let mut line = 0;
    for chunk in bytes.chunks(3) {
        if break_lines && line == LINE_CHARS {
            out.push('\n');
            line = 0;
        }
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let index = ((n >> (18 - 6 * i)) & 0x3F) as usize;
                out.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'=')));
            } else {
                out.push('=');
            }
        }
        line += 4;
    }
    out
}

/// Lower-case hex, as DIGEST-MD5 writes digests.
pub(crate) fn hex(bytes: &[u8; 16]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(32);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Equality whose time does not depend on where the inputs differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
pub(crate) mod testing {
    //! An RFC 2831 client computation, to drive [`DigestServer`] in tests.
    use super::*;

    /// The client's `response=` value and the server's `rspauth` for md5-sess, qop `auth`,
    /// nc 1, no authzid.
    pub(crate) fn rfc_response(
        username: &str,
        realm: &str,
        password: &str,
        nonce: &str,
        cnonce: &str,
        digest_uri: &str,
    ) -> (String, String) {
        let ha1 = hex(&a1_hash(username, realm, password, nonce, cnonce, None));
        let value =
            |prefix| response_value(&ha1, nonce, "00000001", cnonce, "auth", prefix, digest_uri);
        (value("AUTHENTICATE:"), value(":"))
    }

    /// The `response=` value a Spark client with `password` (already base64) computes.
    pub(crate) fn client_response(
        password: &str,
        nonce: &str,
        cnonce: &str,
        digest_uri: &str,
    ) -> String {
        rfc_response(SASL_USER, REALM, password, nonce, cnonce, digest_uri).0
    }
}
