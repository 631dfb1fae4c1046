//! The auth layer's error type.
//!
//! `Display` is what the peer reads: the connection layer sends it back in `RpcFailure` and
//! then closes the connection. Texts start like Spark's own server's ("Authentication
//! failed.", "Unknown challenge message.", "Expected SaslMessage, …", "DIGEST-MD5: …") and add
//! a short reason; they never contain secret material, and peer-supplied strings are cut to
//! [`MAX_PEER_TEXT_BYTES`].

/// Longest prefix of a peer-supplied string (an app id, a QOP) kept in an error.
pub const MAX_PEER_TEXT_BYTES: usize = 128;

/// Why a connection could not be authenticated.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The first auth message is not an AuthEngine message and SASL fallback is off (Spark:
    /// `AuthRpcHandler` without `spark.network.crypto.saslFallback`).
    #[error("Unknown challenge message.")]
    UnknownChallenge {
        /// The payload's first byte (`None`: empty payload).
        tag: Option<u8>,
    },

    /// A SASL message was expected and the payload is something else, e.g. a client without
    /// `spark.authenticate` sending a block-transfer message to a server with it.
    #[error(
        "Expected SaslMessage, received something else \
         (maybe your client does not have SASL enabled?): this shuffle service requires \
         spark.authenticate=true"
    )]
    NotSasl {
        /// The payload's first byte (`None`: empty payload).
        tag: Option<u8>,
    },

    /// An auth message is truncated or malformed (lengths, UTF-8, trailing bytes).
    #[error("Malformed {what}: {detail}")]
    BadMessage {
        /// The message or field concerned.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },

    /// No secret is known for the app id the client claims.
    #[error("Authentication failed. No secret is configured for application '{app}'.")]
    UnknownApp {
        /// The claimed app id, truncated to [`MAX_PEER_TEXT_BYTES`].
        app: String,
    },

    /// The AuthEngine handshake failed: wrong secret (the AES-GCM tag does not verify), a bad
    /// public key, an app id that changed between messages.
    #[error("Authentication failed. {reason}")]
    Failed {
        /// Why, for humans.
        reason: &'static str,
    },

    /// The DIGEST-MD5 exchange failed: wrong password, wrong nonce, missing directives.
    #[error("DIGEST-MD5: {reason}")]
    Sasl {
        /// Why, for humans (may quote a directive name, never a secret).
        reason: String,
    },

    /// The client asked for a SASL quality of protection other than `auth`. `auth-conf`
    /// (SASL encryption, `spark.authenticate.enableSaslEncryption`) and `auth-int` need SASL
    /// wrapping, which this server does not implement.
    #[error(
        "DIGEST-MD5: quality of protection '{qop}' is not supported by this shuffle service; \
         only 'auth' is (disable spark.authenticate.enableSaslEncryption, or use \
         spark.network.crypto.enabled=true for encryption)"
    )]
    UnsupportedQop {
        /// The QOP the client asked for, truncated to [`MAX_PEER_TEXT_BYTES`].
        qop: String,
    },

    /// A message arrived after authentication had already completed, or after it failed.
    #[error("Authentication already {state}.")]
    Finished {
        /// `"completed"` or `"failed"`.
        state: &'static str,
    },

    /// Bytes received under the AES-GCM transport are malformed or do not authenticate.
    #[error("Transport decryption failed: {reason}")]
    Transport {
        /// Why.
        reason: &'static str,
    },

    /// A local cryptographic operation failed (not caused by the peer).
    #[error("Authentication failed. Internal error: {what}")]
    Internal {
        /// The operation that failed.
        what: &'static str,
    },
}

// === impl Error ===

impl Error {
    /// A short snake_case label for metrics, one per variant.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::UnknownChallenge { .. } => "unknown_challenge",
            Error::NotSasl { .. } => "not_sasl",
            Error::BadMessage { .. } => "bad_message",
            Error::UnknownApp { .. } => "unknown_app",
            Error::Failed { .. } => "failed",
            Error::Sasl { .. } => "sasl_failed",
            Error::UnsupportedQop { .. } => "unsupported_qop",
            Error::Finished { .. } => "finished",
            Error::Transport { .. } => "transport",
            Error::Internal { .. } => "internal",
        }
    }

    /// Whether the peer caused the error. Only [`Error::Internal`] is local.
    pub fn caused_by_peer(&self) -> bool {
        !matches!(self, Error::Internal { .. })
    }

    pub(crate) fn bad(what: &'static str, detail: impl Into<String>) -> Error {
        Error::BadMessage {
            what,
            detail: detail.into(),
        }
    }

    pub(crate) fn sasl(reason: impl Into<String>) -> Error {
        Error::Sasl {
            reason: reason.into(),
        }
    }
}

/// `s` cut to at most [`MAX_PEER_TEXT_BYTES`] bytes on a char boundary, `...` appended when cut.
pub(crate) fn truncate_peer_text(s: &str) -> String {
    if s.len() <= MAX_PEER_TEXT_BYTES {
        return s.to_owned();
    }
    let mut end = MAX_PEER_TEXT_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = s.get(..end).unwrap_or_default().to_owned();
    out.push_str("...");
    out
}
