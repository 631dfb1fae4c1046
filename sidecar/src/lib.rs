//! kshuffle-sidecar: the executor-sidecar deployment of the kshuffle daemon.
//!
//! - [`inject`]: pure injection logic, a Spark executor `Pod` in, a JSONPatch out;
//! - [`admission`]: `AdmissionReview` v1 bodies in, `AdmissionReview` responses out (pure);
//! - [`serve`]: the sidecar itself, the daemon plus "serve on after SIGTERM while the driver lives";
//! - [`webhook`]: the HTTPS server around it (rustls, certificate reload, limits, shutdown);
//!
//! See `README.md` in this crate for how the pieces fit on a cluster.

pub mod admission;
pub mod inject;
pub mod serve;
pub mod webhook;
