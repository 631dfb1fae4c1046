//! The codec's error type.
//!
//! Every variant but [`Error::BodyTooLarge`] is caused by the peer's bytes. The `Display` text
//! is meant for humans: it is logged and sent back to Spark clients inside `RpcFailure`, so it
//! never embeds unbounded peer input (block ids are truncated, see [`Error::InvalidBlockId`]).

/// Why bytes could not be decoded, or a value could not be encoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The frame length field is out of range: Spark requires `frameLength - 8` to be greater
    /// than 0 and less than 2^31 - 1 (§1.2).
    #[error(
        "invalid frame length {len}: it must be at least 9 and at most 2147483654 bytes \
         (the 8-byte length field included)"
    )]
    InvalidFrameLength {
        /// The length field as sent.
        len: i64,
    },

    /// The length field is another protocol's opening bytes: a TLS handshake record (Spark
    /// 4's `spark.ssl.rpc.enabled`) or an HTTP request. Named, so that the log says what the
    /// peer did rather than quoting a length of 10^18.
    #[error("the peer speaks {protocol}, not Spark's protocol in the clear: {hint}")]
    OtherProtocol {
        /// What the bytes are.
        protocol: &'static str,
        /// What to do about it.
        hint: &'static str,
    },

    /// An incoming frame is longer than the configured limit; refused before its body is
    /// buffered.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The length field as sent (header included).
        len: i64,
        /// The limit in force.
        max: usize,
    },

    /// The transport message type byte is not one of 0..=12 (§1.4).
    #[error("unknown frame type {ty}")]
    UnknownFrameType {
        /// The type byte as sent.
        ty: u8,
    },

    /// The block-transfer message type byte is unknown (§2.1). Shown signed, as Java does, so
    /// an auth message sent to a non-auth server reads `Unknown message type: -5`.
    #[error("Unknown message type: {ty}")]
    UnknownMessageType {
        /// The type byte as sent, reinterpreted as signed.
        ty: i8,
    },

    /// A field needs more bytes than remain in the frame or message.
    #[error("truncated {what}: needs {needed} bytes but only {remaining} remain")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs (a lower bound for arrays).
        needed: usize,
        /// Bytes left.
        remaining: usize,
    },

    /// A length or element count is negative.
    #[error("negative length for {what}: {len}")]
    NegativeLength {
        /// The field being read.
        what: &'static str,
        /// The length as sent.
        len: i32,
    },

    /// A string field is not valid UTF-8.
    #[error("invalid UTF-8 in {what}")]
    InvalidUtf8 {
        /// The field being read.
        what: &'static str,
    },

    /// The message is structurally inconsistent, e.g. a `FetchShuffleBlocks` whose reduce-id
    /// rows do not match its map ids, or a `bodyLength` field that disagrees with the frame.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// The message or field concerned.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },

    /// A block id string does not parse (§3.3, §4.2).
    #[error("invalid block id '{id}': {reason}")]
    InvalidBlockId {
        /// The id as sent, truncated to at most [`MAX_ID_IN_ERROR_BYTES`] bytes.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// An outgoing body is too large to fit in one Spark frame.
    #[error("body of {len} bytes is too large for one frame")]
    BodyTooLarge {
        /// The body length ([`try_encode`](super::try_encode): the whole frame's length).
        len: u64,
    },
}

/// Longest prefix of a peer-supplied id kept in an [`Error::InvalidBlockId`].
pub const MAX_ID_IN_ERROR_BYTES: usize = 128;

// === impl Error ===

impl Error {
    /// A short snake_case label for metrics, one per variant.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidFrameLength { .. } => "invalid_frame_length",
            Error::OtherProtocol { .. } => "other_protocol",
            Error::FrameTooLarge { .. } => "frame_too_large",
            Error::UnknownFrameType { .. } => "unknown_frame_type",
            Error::UnknownMessageType { .. } => "unknown_message_type",
            Error::Truncated { .. } => "truncated",
            Error::NegativeLength { .. } => "negative_length",
            Error::InvalidUtf8 { .. } => "invalid_utf8",
            Error::Malformed { .. } => "malformed",
            Error::InvalidBlockId { .. } => "invalid_block_id",
            Error::BodyTooLarge { .. } => "body_too_large",
        }
    }

    /// Whether the peer caused the error (bad bytes on the wire) rather than this process
    /// (a value it tried to encode). Only [`Error::BodyTooLarge`] is local.
    pub fn caused_by_peer(&self) -> bool {
        !matches!(self, Error::BodyTooLarge { .. })
    }

    /// An [`Error::InvalidBlockId`] keeping at most [`MAX_ID_IN_ERROR_BYTES`] of `id`.
    pub(crate) fn invalid_block_id(id: &str, reason: &'static str) -> Error {
        Error::InvalidBlockId {
            id: truncate_for_error(id),
            reason,
        }
    }
}

/// `s` cut to at most [`MAX_ID_IN_ERROR_BYTES`] bytes on a char boundary, with `...` appended
/// when something was cut.
fn truncate_for_error(s: &str) -> String {
    if s.len() <= MAX_ID_IN_ERROR_BYTES {
        return s.to_owned();
    }
    let mut end = MAX_ID_IN_ERROR_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + 3);
    out.push_str(s.get(..end).unwrap_or_default());
    out.push_str("...");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unknown_message_type_is_signed_like_java() {
        let err = Error::UnknownMessageType { ty: 0xFBu8 as i8 };
        assert_eq!(err.to_string(), "Unknown message type: -5");
        assert_eq!(err.kind(), "unknown_message_type");
    }

    #[test]
    fn kinds_are_distinct() {
        let all = [
            Error::InvalidFrameLength { len: 0 },
            Error::OtherProtocol {
                protocol: "x",
                hint: "y",
            },
            Error::FrameTooLarge { len: 0, max: 0 },
            Error::UnknownFrameType { ty: 0 },
            Error::UnknownMessageType { ty: 0 },
            Error::Truncated {
                what: "x",
                needed: 0,
                remaining: 0,
            },
            Error::NegativeLength { what: "x", len: -1 },
            Error::InvalidUtf8 { what: "x" },
            Error::Malformed {
                what: "x",
                detail: String::new(),
            },
            Error::InvalidBlockId {
                id: String::new(),
                reason: "x",
            },
            Error::BodyTooLarge { len: 0 },
        ];
        let mut kinds: Vec<_> = all.iter().map(Error::kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), all.len());
        assert_eq!(all.iter().filter(|e| !e.caused_by_peer()).count(), 1);
    }

    #[test]
    fn block_id_in_error_is_truncated_on_char_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let Error::InvalidBlockId { id, .. } = Error::invalid_block_id(&long, "x") else {
            unreachable!()
        };
        assert!(id.len() <= MAX_ID_IN_ERROR_BYTES + 3);
        assert!(id.ends_with("..."));
        let short = Error::invalid_block_id("rdd_1", "too few parts");
        assert_eq!(short.to_string(), "invalid block id 'rdd_1': too few parts");
    }
}
