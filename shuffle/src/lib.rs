//! kshuffle: an external shuffle service for Apache Spark, built for Kubernetes.
//!
//! Unmodified Spark 3.5 and 4.x executors register with it and fetch shuffle blocks from it
//! over Spark's own wire protocol, so executors can go away (dynamic allocation, eviction)
//! while their shuffle output stays served.
//!
//! Layers, dependencies pointing one way:
//! - [`server`]: accept loop, connection limit, shutdown;
//! - [`conn`]: one connection's I/O: frames in, replies out (zero-copy `sendfile`);
//!   [`budget`]: the global bound on what peers make it buffer; [`tls`]: TLS under the
//!   framing (Spark's `spark.ssl.rpc.*`);
//! - [`handler`]: what each request does; [`stream`]: the chunks a fetch promised;
//! - [`wire`]: the pure codec of Spark's frames, messages and block ids (no I/O);
//! - [`store`]: block id → file segment on disk, confined to the allowed roots;
//! - [`registry`]: registered executors, durable in a journal;
//! - [`admin`]: the admin HTTP port (health, metrics, application lifecycle); [`metrics`];
//! - [`daemon`]: the whole daemon (flags, ports, signals) for the binaries that run it.
//!
//! [`fixture`] writes Spark-format files for tests and benchmarks; [`client`] is a minimal
//! protocol client (with Spark's auth handshake and transport cipher) for tests, benchmarks
//! and tools, never used by the daemon.

pub mod admin;
pub mod auth;
pub mod budget;
pub mod client;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod fixture;
#[doc(hidden)]
pub mod fuzzing;
pub mod handler;
pub mod metrics;
pub mod registry;
pub mod secrets;
pub mod server;
pub mod stats;
pub mod store;
pub mod stream;
#[cfg(test)]
mod test_rng;
pub mod tls;
pub mod wire;

pub use config::Config;
pub use server::Server;
