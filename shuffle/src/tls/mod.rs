//! TLS on the shuffle port (Spark 4's `spark.ssl.rpc.*`), with rustls and ring:
//! - [`CertStore`]: the serving certificate from PEM files, reloaded when they change;
//! - [`Layer`]: one connection's TLS session without I/O, under the framing (and around the
//!   AES transport cipher when a client has both).
//!
//! Bodies on a TLS connection are read and encrypted in user memory, like those of
//! AES-encrypted connections: only connections in the clear are zero-copy (`sendfile`).

mod certs;
mod layer;

pub use certs::{CertStore, Error as CertError};
pub use layer::{Error, Layer};
