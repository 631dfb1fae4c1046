//! Counters of what the daemon served: cheap atomics bumped on the request path, read by
//! tests, the shutdown log line and (later) the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters. All methods take `&self`.
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// A point-in-time copy of [`Stats`].
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct Snapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Stats {
            /// Copies every counter.
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        impl Snapshot {
            /// `(name, value)` of every counter, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
            }
        }
    };
}

counters! {
    /// Connections accepted.
    connections,
    /// Connections refused because the connection limit was reached.
    connections_refused,
    /// `RegisterExecutor` requests accepted.
    registrations,
    /// `OpenBlocks` requests answered with a stream.
    open_blocks,
    /// `FetchShuffleBlocks` requests answered with a stream.
    fetch_shuffle_blocks,
    /// `FetchShuffleBlocks` requests with batch fetch (contiguous reduce ranges).
    batch_fetches,
    /// `RemoveBlocks` requests answered.
    remove_blocks,
    /// Files deleted by `RemoveBlocks`.
    blocks_removed,
    /// `GetLocalDirsForExecutors` requests answered.
    local_dirs_requests,
    /// `DiagnoseCorruption` requests answered.
    diagnoses,
    /// Map outputs (data file + index) opened to serve chunks: once per stream and map
    /// output, however many of its partitions the stream asks for one after another.
    map_outputs_opened,
    /// `ChunkFetchSuccess` replies sent.
    chunks_served,
    /// Body bytes of `ChunkFetchSuccess` replies.
    chunk_bytes,
    /// `StreamResponse` replies sent (fetch-to-disk of large blocks).
    streams_served,
    /// Body bytes of `StreamResponse` replies.
    stream_bytes,
    /// RDD blocks served (chunks or streams).
    rdd_blocks_served,
    /// `RpcFailure` replies sent.
    rpc_failures,
    /// `ChunkFetchFailure` and `StreamFailure` replies sent.
    chunk_failures,
    /// Connections closed because of a protocol error, timeout or I/O error.
    connection_errors,
    /// Times a connection let the other tasks of its worker run after sending
    /// `conn::TURN_BYTES` of bodies in a row.
    turns_yielded,
    /// Stream-opening RPCs answered ahead of chunk requests that arrived before them
    /// (`conn::Connection::read_ahead`).
    rpcs_read_ahead,
    /// Chunk requests served ahead of one that arrived before them, to share the connection
    /// among its streams (`conn::Connection::pick_ahead`).
    chunks_out_of_turn,
    /// Connections whose auth handshake set up Spark's AES transport cipher
    /// (`spark.network.crypto.enabled`).
    encrypted_connections,
    /// TLS handshakes completed (Spark's `spark.ssl.rpc.*`, daemon started with a
    /// certificate).
    tls_handshakes,
    /// Connections open now (a gauge).
    connections_open,
    /// Streams open now, over all connections (a gauge).
    streams_open,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one from a gauge.
    pub fn dec(gauge: &AtomicU64) {
        gauge.fetch_sub(1, Ordering::Relaxed);
    }

    /// Moves a gauge from `old` to `new`.
    pub fn adjust(gauge: &AtomicU64, old: usize, new: usize) {
        if new > old {
            gauge.fetch_add((new - old) as u64, Ordering::Relaxed);
        } else if old > new {
            gauge.fetch_sub((old - new) as u64, Ordering::Relaxed);
        }
    }
}
