//! TLS on the shuffle port (Spark 4's `spark.ssl.rpc.*`), with rustls and ring:
//! - [`CertStore`]: the serving certificate from PEM files, reloaded when they change;
//! - [`Layer`]: one connection's TLS session without I/O, under the framing (inside the AES
//!   transport cipher when a client has both);
//! - [`client_config`]: what a client (the protocol client of tests, benchmarks and tools)
//!   connects with.
//!
//! Bodies on a TLS connection are read and encrypted in user memory, like those of
//! AES-encrypted connections: only connections in the clear are zero-copy (`sendfile`).

mod certs;
mod layer;

pub use certs::{CertStore, Error as CertError};
pub(crate) use layer::whole_records;
pub use layer::{Error, Layer};

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

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
