//! TLS on the shuffle port (Spark 4's `spark.ssl.rpc.*`), with rustls and ring:
//! - [`CertStore`]: the serving certificate from PEM files, reloaded when they change;
//! - [`Layer`]: one connection's TLS session without I/O, under the framing (inside the AES
//!   transport cipher when a client has both);
//! - [`client_config`]: what a client (the protocol client of tests, benchmarks and tools)
//!   connects with;
//! - [`open_records`], [`seal_records`]: the two moves of any rustls session without I/O,
//!   client or server.
//!
//! Bodies on a TLS connection are read and encrypted in user memory, like those of
//! AES-encrypted connections: only connections in the clear are zero-copy (`sendfile`).

mod certs;
mod layer;

pub use certs::{CertStore, Error as CertError};
pub(crate) use layer::whole_records;
pub use layer::{Error, Layer};

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use rustls::pki_types::CertificateDer;
use rustls::{ConnectionCommon, SideData};

/// Hands the records in `records` to `conn`, as many as it takes, and appends the plaintext
/// they carry to `plain`; what it does not take (an incomplete record) stays in `records`.
///
/// # Errors
/// rustls's, for a record that does not verify or an alert from the peer; an I/O error when
/// rustls refuses more bytes (its buffer full; not expected with records handed over as
/// they come).
pub fn open_records<D: SideData, E>(
    conn: &mut ConnectionCommon<D>,
    records: &mut BytesMut,
    plain: &mut BytesMut,
) -> Result<(), E>
where
    E: From<io::Error> + From<rustls::Error>,
{
    while !records.is_empty() {
        let took = conn.read_tls(&mut records.as_ref())?;
        records.advance(took);
        let ready = conn.process_new_packets()?.plaintext_bytes_to_read();
        if ready > 0 {
            let at = plain.len();
            plain.resize(at + ready, 0);
            conn.reader().read_exact(&mut plain[at..])?;
        }
        if took == 0 {
            break;
        }
    }
    Ok(())
}

/// Encrypts `plain` and appends the records to `out`, after any handshake messages or alerts
/// `conn` has pending (`plain` may be empty to take only those).
///
/// # Errors
/// When rustls fails to encrypt (not expected).
pub fn seal_records<D: SideData>(
    conn: &mut ConnectionCommon<D>,
    plain: &[u8],
    out: &mut BytesMut,
) -> io::Result<()> {
    if !plain.is_empty() {
        conn.writer().write_all(plain)?;
    }
    let mut sink = out.writer();
    while conn.wants_write() {
        conn.write_tls(&mut sink)?;
    }
    Ok(())
}

/// A client config (ring, TLS 1.2 and 1.3, no client certificate) that trusts exactly
/// `roots`: the certificates of the servers it may talk to, or their CAs.
///
/// # Errors
/// When a certificate of `roots` cannot be a trust anchor.
pub fn client_config(
    roots: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(store)
    .with_no_client_auth())
}
