//! The webhook's serving certificate: kshuffle's [`CertStore`] (PEM files, reloaded when they
//! change), served as HTTP/1.1.

use std::sync::Arc;

pub use kshuffle::tls::{CertError as Error, CertStore};

/// A rustls server config serving `certs` to HTTP/1.1 clients (the API server's webhook
/// calls), TLS 1.2 and 1.3.
///
/// # Errors
/// Never with the ring provider's defaults; kept for rustls's API.
pub fn server_config(certs: &Arc<CertStore>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = certs.server_config()?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
