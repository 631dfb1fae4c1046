//! The server side of TLS on one shuffle connection, without I/O: records as received go in,
//! plaintext comes out; plaintext goes in, records to send come out. The connection
//! ([`crate::conn`]) does the socket I/O around it, as it does for the AES transport cipher,
//! which (when a client sets both) runs around it, next to the socket, as in Spark.
//!
//! Records are handed to rustls only whole: a record still arriving stays in the caller's
//! buffer, where the connection's frame timeout and read budget see it, rather than in a
//! buffer of rustls's that they cannot.

use std::io::{self, Write};
use std::sync::Arc;

use bytes::BytesMut;
use rustls::{ServerConfig, ServerConnection};

/// A TLS record's header: content type, protocol version, length.
const RECORD_HEADER_BYTES: usize = 5;
/// The content type of handshake records, the first a client sends.
const HANDSHAKE: u8 = 22;
/// The largest record length TLS allows (2^14 of plaintext plus 2,048 of expansion, RFC
/// 5246 §6.2.3); a longer one is passed to rustls as is, which refuses it.
const MAX_RECORD_BYTES: usize = (1 << 14) + 2048;

/// Why the TLS layer gave up on a connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The first byte is 0, as in the length field that opens every frame of Spark's
    /// protocol: a client without TLS on a port that requires it.
    #[error(
        "the peer speaks Spark's protocol in the clear, but this daemon requires TLS \
         (--tls-cert-file): set spark.ssl.rpc.enabled=true in the application (Spark 4), \
         trusting this daemon's certificate"
    )]
    Plaintext,
    /// The first byte is neither a TLS handshake record's nor a Spark frame's.
    #[error("the peer does not open with a TLS handshake (first byte {0:#04x})")]
    NotTls(u8),
    /// The client refused this daemon's certificate (its alert says so).
    #[error(
        "TLS: the client does not trust this daemon's certificate ({0:?}): add it, or the CA \
         that issued it, to the application's spark.ssl.rpc.trustStore"
    )]
    Untrusted(rustls::AlertDescription),
    /// The handshake failed or a record did not verify (rustls sent the peer an alert).
    #[error("TLS: {0}")]
    Protocol(rustls::Error),
    /// rustls refused bytes it was handed (its buffers full); not expected with whole
    /// records handed over one at a time.
    #[error("TLS: {0}")]
    Buffer(#[from] io::Error),
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Self {
        use rustls::AlertDescription::{BadCertificate, CertificateUnknown, UnknownCA};
        match e {
            rustls::Error::AlertReceived(
                alert @ (BadCertificate | CertificateUnknown | UnknownCA),
            ) => Error::Untrusted(alert),
            other => Error::Protocol(other),
        }
    }
}

/// One connection's TLS state.
#[derive(Debug)]
pub struct Layer {
    conn: ServerConnection,
    /// Whether any byte arrived yet (the first one is checked for plaintext).
    started: bool,
    /// Whether [`Layer::newly_established`] reported the handshake's end.
    reported: bool,
}

impl Layer {
    /// A new server session with `config`.
    ///
    /// # Errors
    /// When rustls cannot start one with `config` (not with a config from
    /// [`super::CertStore::server_config`]).
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, Error> {
        let mut conn = ServerConnection::new(config)?;
        // What `seal` writes is encrypted at once and taken out by the caller; the caller
        // bounds how much it hands over at a time.
        conn.set_buffer_limit(None);
        Ok(Self {
            conn,
            started: false,
            reported: false,
        })
    }

    /// Whether the handshake is still under way (a partial frame, for the frame timeout).
    pub fn is_handshaking(&self) -> bool {
        self.started && self.conn.is_handshaking()
    }

    /// Whether handshake messages or alerts are waiting to be sent ([`Layer::seal`] with no
    /// plaintext takes them).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// The protocol version and cipher suite, once the handshake is done (for the log).
    pub fn negotiated(&self) -> Option<(rustls::ProtocolVersion, rustls::CipherSuite)> {
        if self.conn.is_handshaking() {
            return None;
        }
        Some((
            self.conn.protocol_version()?,
            self.conn.negotiated_cipher_suite()?.suite(),
        ))
    }

    /// [`Layer::negotiated`] the first time it is known, then `None` (to count handshakes).
    pub fn newly_established(&mut self) -> Option<(rustls::ProtocolVersion, rustls::CipherSuite)> {
        if self.reported {
            return None;
        }
        let negotiated = self.negotiated()?;
        self.reported = true;
        Some(negotiated)
    }

    /// Takes the whole records at the front of `received`, and appends their plaintext to
    /// `plain`; a record not complete yet stays in `received`. Handshake replies and alerts
    /// this produces wait for the next [`Layer::seal`].
    ///
    /// # Errors
    /// [`Error::Plaintext`] when the peer opens with a Spark frame instead of a handshake,
    /// [`Error::NotTls`] with anything else;
    /// [`Error::Protocol`] for anything rustls refuses (an alert for the peer is then
    /// pending).
    pub fn open(&mut self, received: &mut BytesMut, plain: &mut BytesMut) -> Result<(), Error> {
        if !self.started
            && let Some(&first) = received.first()
        {
            self.started = true;
            match first {
                HANDSHAKE => {}
                0 => return Err(Error::Plaintext),
                other => return Err(Error::NotTls(other)),
            }
        }
        let whole = whole_records(received);
        let mut records = received.split_to(whole);
        super::open_records(&mut self.conn, &mut records, plain)
    }

    /// Encrypts `plain` and appends the records to `out`, after any handshake messages or
    /// alerts pending (`plain` may be empty to take only those).
    ///
    /// # Errors
    /// When rustls fails to encrypt (not expected).
    pub fn seal(&mut self, plain: &[u8], out: &mut BytesMut) -> Result<(), Error> {
        Ok(super::seal_records(&mut self.conn, plain, out)?)
    }

    /// [`Layer::seal`] of what `buf` holds, into `buf`: its plaintext is replaced by the
    /// records (rustls takes a copy as it encrypts), so a connection needs no second buffer
    /// the size of its write batch.
    ///
    /// # Errors
    /// As [`Layer::seal`].
    pub fn seal_in_place(&mut self, buf: &mut BytesMut) -> Result<(), Error> {
        if !buf.is_empty() {
            self.conn.writer().write_all(buf)?;
            buf.clear();
        }
        self.seal(&[], buf)
    }

    /// Queues a `close_notify` alert for the next [`Layer::seal`].
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}

/// How many bytes at the front of `buf` are whole records (all of `buf` when a header is
/// impossible, an unknown content type or a length over the limit: rustls then refuses it).
pub(crate) fn whole_records(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(header) = buf.get(at..at + RECORD_HEADER_BYTES) {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if !(20..=24).contains(&header[0]) || len > MAX_RECORD_BYTES {
            return buf.len();
        }
        let end = at + RECORD_HEADER_BYTES + len;
        if end > buf.len() {
            break;
        }
        at = end;
    }
    at
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
