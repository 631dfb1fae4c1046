//! The daemon's validated configuration (the binary builds it from flags).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthEngineVersion, CipherMode, SecretSource};

use crate::wire::DEFAULT_MAX_FRAME_LEN_BYTES;

/// Default of [`Config::read_buffer_budget_bytes`]: 32 frames of the default 16 MiB limit.
pub const DEFAULT_READ_BUFFER_BUDGET_BYTES: usize = 512 * 1024 * 1024;

/// Default of [`Config::stream_budget_bytes`].
pub const DEFAULT_STREAM_BUDGET_BYTES: usize = 512 * 1024 * 1024;
/// Default of [`Config::inline_body_max_bytes`]: bodies up to 32 KiB are copied into the
/// reply batch. For a 4 KiB block a `send` of its header plus a `sendfile` of its body cost
/// more than one `pread` copy, and many such replies then leave in one write; larger bodies
/// (nearly all the bytes of a real shuffle) still go out with `sendfile`. Measured side by
/// side with Spark's service (README, Benchmarks): small-block throughput 2.9x -> 5.2x Java's,
/// p99 open-to-first-byte 0.54 -> 0.24 of Java's, CPU per GB 0.28 -> 0.20.
pub const DEFAULT_INLINE_BODY_MAX_BYTES: u64 = 32 * 1024;

/// Everything the server needs besides its listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directories executors' local dirs must be inside. At least one.
    pub allowed_roots: Vec<PathBuf>,
    /// Largest incoming frame accepted; a larger one closes the connection.
    pub max_frame_len_bytes: usize,
    /// Most connections served at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Most open streams (fetches not yet fully read) per connection; above, requests that
    /// open streams get an `RpcFailure`.
    pub max_streams_per_connection: usize,
    /// A connection with no incoming bytes for this long is closed (Spark's
    /// `spark.shuffle.io.connectionTimeout`; clients reconnect transparently).
    pub idle_timeout: Duration,
    /// A reply that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
    /// A frame (or auth message) whose first byte arrived must be complete within this long;
    /// otherwise the connection is closed. Stops slow senders that trickle bytes to stay
    /// under the idle timeout.
    pub frame_timeout: Duration,
    /// Bytes all connections together may hold in read buffers beyond
    /// [`crate::conn::READ_ALLOWANCE_BYTES`] each (large frames being received); a connection
    /// that needs more while it is spent is closed.
    pub read_buffer_budget_bytes: usize,
    /// Bytes all open streams of all connections may keep (their requests' block lists); a
    /// request that would open a stream beyond it gets an `RpcFailure`.
    pub stream_budget_bytes: usize,
    /// On shutdown, how long connections may keep serving open streams.
    pub shutdown_grace_period: Duration,
    /// Bound of the cache of parsed index files.
    pub index_cache_bytes: usize,
    /// Data-file descriptors kept open between requests (0: none); see
    /// [`crate::store::OpenFiles`].
    pub open_data_files: usize,
    /// TCP congestion control set on every shuffle connection (`None`: the node's
    /// default); see [`crate::daemon::congestion`].
    pub tcp_congestion_control: Option<String>,
    /// Chunk bodies up to this size are copied into the write batch instead of being sent
    /// with `sendfile` (0: always `sendfile`, zero-copy); see [`DEFAULT_INLINE_BODY_MAX_BYTES`].
    pub inline_body_max_bytes: u64,
    /// `spark.authenticate`: when set, every connection must authenticate first.
    pub auth: Option<AuthSettings>,
    /// Spark 4's `spark.ssl.rpc.enabled`: when set, every connection must speak TLS (first,
    /// under the auth handshake and any transport cipher); see [`crate::tls`].
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// How clients authenticate (Spark's `spark.authenticate` and `spark.network.crypto.*`).
#[derive(Clone)]
pub struct AuthSettings {
    /// Where each application's secret comes from.
    pub secrets: Arc<dyn SecretSource>,
    /// `spark.network.crypto.authEngineVersion` of the clients (1 by default).
    pub version: AuthEngineVersion,
    /// `spark.network.crypto.cipher` of the clients (AES/CTR by default).
    pub cipher: CipherMode,
    /// `spark.network.crypto.saslFallback`: also accept SASL DIGEST-MD5 clients (what Spark
    /// uses when `spark.network.crypto.enabled` is false, its default).
    pub sasl_fallback: bool,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("version", &self.version)
            .field("cipher", &self.cipher)
            .field("sasl_fallback", &self.sasl_fallback)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The defaults, with `allowed_roots`.
    pub fn new(allowed_roots: Vec<PathBuf>) -> Self {
        Self {
            allowed_roots,
            max_frame_len_bytes: DEFAULT_MAX_FRAME_LEN_BYTES,
            max_connections: 4096,
            max_streams_per_connection: 4096,
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(120),
            frame_timeout: Duration::from_secs(60),
            read_buffer_budget_bytes: DEFAULT_READ_BUFFER_BUDGET_BYTES,
            stream_budget_bytes: DEFAULT_STREAM_BUDGET_BYTES,
            shutdown_grace_period: Duration::from_secs(30),
            index_cache_bytes: 100 * 1024 * 1024,
            open_data_files: 1024,
            tcp_congestion_control: None,
            inline_body_max_bytes: DEFAULT_INLINE_BODY_MAX_BYTES,
            auth: None,
            tls: None,
        }
    }
}
