//! The client side of Spark's SASL DIGEST-MD5 exchange (what `SparkSaslClient` does with QOP
//! `auth`), for tests of the daemon and for kshuffle's own clients. Messages in and out are
//! whole RPC payloads: `SaslMessage`s out, raw tokens in.

use zeroize::Zeroizing;

use super::digest::{
    self, Directives, REALM, SASL_USER, a1_hash, constant_time_eq, hex, response_value,
};
use super::error::truncate_peer_text;
use super::message::SaslMessage;
use super::{Error, Secret};

/// The `digest-uri` Spark's client sends: its SASL client is created with protocol `null`
/// and server name `default`.
pub(crate) const DIGEST_URI: &str = "null/default";
/// Random bytes in a client nonce.
const CNONCE_RAW_BYTES: usize = 30;

/// One client-side DIGEST-MD5 exchange.
pub struct SaslClient {
    app_id: String,
    password: Zeroizing<String>,
    /// The `rspauth` value the server must send, once the response was computed.
    expected_rspauth: Option<String>,
}

// === impl SaslClient ===

impl SaslClient {
    /// Starts an exchange for `app_id` with `secret`; returns the client and the first
    /// `RpcRequest` payload (a `SaslMessage` with an empty token).
    pub fn start(app_id: &str, secret: &Secret) -> (Self, Vec<u8>) {
        let first = SaslMessage { app_id, token: b"" }.encode();
        let client = SaslClient {
            app_id: app_id.to_owned(),
            password: Zeroizing::new(digest::base64(secret.as_bytes(), true)),
            expected_rspauth: None,
        };
        (client, first)
    }

    /// Answers the server's digest-challenge (the payload of its `RpcResponse`) with the
    /// next `RpcRequest` payload. `random` supplies the 30 bytes of the client nonce.
    ///
    /// # Errors
    /// [`Error::Sasl`] if the challenge is malformed, lacks a nonce, is not md5-sess, or does
    /// not offer QOP `auth`.
    pub fn respond(
        &mut self,
        challenge: &[u8],
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Result<Vec<u8>, Error> {
        let text = std::str::from_utf8(challenge)
            .map_err(|_| Error::sasl("digest challenge is not UTF-8"))?;
        let (mut nonce, mut qop, mut algorithm) = (None, None, None);
        for (key, value) in Directives::new(text) {
            let (key, value) = (key?, value?);
            match key.to_ascii_lowercase().as_str() {
                "nonce" => nonce = Some(value),
                "qop" => qop = Some(value),
                "algorithm" => algorithm = Some(value),
                _ => {}
            }
        }
        let nonce = nonce.ok_or_else(|| Error::sasl("digest challenge without a nonce"))?;
        if algorithm.as_deref() != Some("md5-sess") {
            return Err(Error::sasl("digest challenge is not md5-sess"));
        }
        let offered = qop.unwrap_or_else(|| "auth".to_owned());
        if !offered.split(',').any(|q| q.trim() == "auth") {
            return Err(Error::sasl(format!(
                "No common protection layer between client and server (offered '{}')",
                truncate_peer_text(&offered)
            )));
        }
        let mut raw = [0u8; CNONCE_RAW_BYTES];
        random(&mut raw);
        let cnonce = digest::base64(&raw, false);
        let nc = "00000001";
        let ha1 = hex(&a1_hash(
            SASL_USER,
            REALM,
            &self.password,
            &nonce,
            &cnonce,
            None,
        ));
        let response = response_value(
            &ha1,
            &nonce,
            nc,
            &cnonce,
            "auth",
            "AUTHENTICATE:",
            DIGEST_URI,
        );
        self.expected_rspauth = Some(response_value(
            &ha1, &nonce, nc, &cnonce, "auth", ":", DIGEST_URI,
        ));
        let token = format!(
            "charset=utf-8,username=\"{SASL_USER}\",realm=\"{REALM}\",nonce=\"{nonce}\",\
             nc={nc},cnonce=\"{cnonce}\",digest-uri=\"{DIGEST_URI}\",maxbuf=65536,\
             response={response},qop=auth"
        );
        Ok(SaslMessage {
            app_id: &self.app_id,
            token: token.as_bytes(),
        }
        .encode())
    }

    /// Checks the server's final token (`rspauth=<hex>`): the server knew the secret too.
    ///
    /// # Errors
    /// [`Error::Sasl`] if it is missing or wrong, or [`SaslClient::respond`] was not called.
    pub fn finish(self, final_token: &[u8]) -> Result<(), Error> {
        let expected = self
            .expected_rspauth
            .ok_or_else(|| Error::sasl("no digest response was sent"))?;
        let given = final_token
            .strip_prefix(b"rspauth=")
            .ok_or_else(|| Error::sasl("the server's final token is not rspauth"))?;
        if constant_time_eq(given, expected.as_bytes()) {
            Ok(())
        } else {
            Err(Error::sasl("the server's rspauth does not match"))
        }
    }
}

impl std::fmt::Debug for SaslClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslClient")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}
