//! Spark's network protocol as a pure codec: transport frames ([`Frame`]), the block-transfer
//! messages carried in RPC bodies ([`Message`]) and block ids ([`BlockId`]).
//!
//! No I/O and no tokio here. Every length read from the peer is checked against the bytes
//! that are actually present before anything is allocated, and incoming frames larger than
//! the caller's limit are refused before their body is buffered. Layouts follow
//! `../shared/spark-shuffle-protocol.md` §1–§2 (identical in Spark 3.5.x and 4.x).

mod block_id;
mod error;
mod frame;
mod message;
mod reader;
mod roaring;
mod writer;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use block_id::BlockId;
pub use error::{Error, MAX_ID_IN_ERROR_BYTES};
pub use frame::{
    FRAME_HEADER_LEN_BYTES, Frame, MAX_SPARK_FRAME_LEN_BYTES, StreamChunkId, decode, encode,
    encode_chunk_success_header, encode_stream_response_header, try_encode,
};
pub use message::{ExecutorShuffleInfo, Message};

/// Default limit on the length of one incoming frame (the header included).
///
/// Spark's own requests are KiBs; a `FetchShuffleBlocks` for ~10^5 tiny blocks is 1–2 MiB.
pub const DEFAULT_MAX_FRAME_LEN_BYTES: usize = 16 * 1024 * 1024;
