//! Block-transfer messages (§2): the payloads of `RpcRequest`, `RpcResponse`, `OneWayMessage`
//! and `UploadStream` meta. A payload is a `u8` type (0..=19) followed by the type's fields.
//!
//! Invariants of [`Message::decode`]:
//! - every count and length is checked against the remaining bytes before anything is
//!   allocated (Spark 4.x rules, §1.3);
//! - bytes after the last field are ignored, as Spark does;
//! - structurally inconsistent messages are refused with [`Error::Malformed`](super::Error::Malformed): row counts that
//!   disagree (`FetchShuffleBlocks`, `FetchShuffleBlockChunks`, `LocalDirsForExecutors`,
//!   `MergeStatuses`) and batch reduce ranges that are not `[start, end)` with
//!   `0 <= start < end`.
//!
//! Auth messages (tags 0xFB, 0xEA) are not block-transfer messages and decode to
//! [`Error::UnknownMessageType`](super::Error::UnknownMessageType), as in Java.

use bytes::{Bytes, BytesMut};

mod decode;
mod encode;

/// Where an executor keeps its block files (§2.2), sent in `RegisterExecutor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorShuffleInfo {
    /// Absolute paths of the executor's `blockmgr-<uuid>` dirs, in order (§4.1).
    pub local_dirs: Vec<String>,
    /// Number of hashed sub-directories per local dir (`spark.diskStore.subDirectories`).
    pub sub_dirs_per_local_dir: i32,
    /// Class name of the executor's shuffle manager (§5.1).
    pub shuffle_manager: String,
}

/// A block-transfer message. Type ids are in the comments and [`Message::type_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 0: open a stream over the given blocks (`shuffle_*` or `rdd_*` ids, §3.3).
    OpenBlocks {
        /// Application id.
        app_id: String,
        /// Executor that wrote the blocks.
        exec_id: String,
        /// Block ids, one chunk each.
        block_ids: Vec<String>,
    },
    /// 1: upload a block (executor to executor only).
    UploadBlock {
        /// Application id.
        app_id: String,
        /// Executor id.
        exec_id: String,
        /// Block id.
        block_id: String,
        /// Serialized storage level and class tag.
        metadata: Bytes,
        /// The block.
        block_data: Bytes,
    },
    /// 2: register an executor's local dirs.
    RegisterExecutor {
        /// Application id.
        app_id: String,
        /// Executor id.
        exec_id: String,
        /// Where its files are.
        info: ExecutorShuffleInfo,
    },
    /// 3: reply to a stream-opening request.
    StreamHandle {
        /// The registered stream.
        stream_id: i64,
        /// Number of chunks the client will fetch.
        num_chunks: i32,
    },
    /// 4: Mesos driver registration (Spark 3.5 only).
    RegisterDriver {
        /// Application id.
        app_id: String,
        /// Heartbeat timeout in milliseconds.
        heartbeat_timeout_ms: i64,
    },
    /// 5: Mesos driver heartbeat (Spark 3.5 only).
    ShuffleServiceHeartbeat {
        /// Application id.
        app_id: String,
    },
    /// 6: `UploadStream` meta for a block upload (executor to executor only).
    UploadBlockStream {
        /// Block id.
        block_id: String,
        /// Serialized storage level and class tag.
        metadata: Bytes,
    },
    /// 7: delete block files (file names, §5.3).
    RemoveBlocks {
        /// Application id.
        app_id: String,
        /// Executor that wrote the files.
        exec_id: String,
        /// File names such as `shuffle_0_5_0.index`.
        block_ids: Vec<String>,
    },
    /// 8: reply to `RemoveBlocks`.
    BlocksRemoved {
        /// Number of files deleted.
        num_removed_blocks: i32,
    },
    /// 9: open a stream over shuffle blocks (§3.3).
    FetchShuffleBlocks {
        /// Application id.
        app_id: String,
        /// Executor that wrote the map outputs.
        exec_id: String,
        /// Shuffle id.
        shuffle_id: i32,
        /// Map task attempt ids.
        map_ids: Vec<i64>,
        /// One row per map id: reduce ids, or `[start, end)` when batch.
        reduce_ids: Vec<Vec<i32>>,
        /// Whether each row is a contiguous `[start, end)` range.
        batch_fetch_enabled: bool,
    },
    /// 10: ask for other executors' local dirs (host-local reads, §3.5).
    GetLocalDirsForExecutors {
        /// Application id.
        app_id: String,
        /// Executors asked about.
        exec_ids: Vec<String>,
    },
    /// 11: reply to `GetLocalDirsForExecutors`.
    LocalDirsForExecutors {
        /// Executors, in reply order.
        exec_ids: Vec<String>,
        /// Number of dirs of each executor.
        num_local_dirs_by_exec: Vec<i32>,
        /// All executors' dirs concatenated in `exec_ids` order.
        all_local_dirs: Vec<String>,
    },
    /// 12: `UploadStream` meta of a pushed block (push-based shuffle).
    PushBlockStream {
        /// Application id.
        app_id: String,
        /// Application attempt.
        app_attempt_id: i32,
        /// Shuffle id.
        shuffle_id: i32,
        /// Merge id of the shuffle.
        shuffle_merge_id: i32,
        /// Map index.
        map_index: i32,
        /// Reduce partition.
        reduce_id: i32,
        /// Index of the block in the push request.
        index: i32,
    },
    /// 13: finalize a merged shuffle (push-based shuffle).
    FinalizeShuffleMerge {
        /// Application id.
        app_id: String,
        /// Application attempt.
        app_attempt_id: i32,
        /// Shuffle id.
        shuffle_id: i32,
        /// Merge id of the shuffle.
        shuffle_merge_id: i32,
    },
    /// 14: reply to `FinalizeShuffleMerge`. Bitmaps kept as their raw portable-serialization
    /// bytes, one `Bytes` per bitmap (little-endian inside, see §2.4).
    MergeStatuses {
        /// Shuffle id.
        shuffle_id: i32,
        /// Merge id of the shuffle.
        shuffle_merge_id: i32,
        /// Map indexes merged into each reduce partition.
        bitmaps: Vec<Bytes>,
        /// Reduce partitions.
        reduce_ids: Vec<i32>,
        /// Merged sizes.
        sizes: Vec<i64>,
    },
    /// 15: open a stream over merged chunks (push-based shuffle). Note `shuffle_merge_id`
    /// comes before `reduce_ids` on the wire.
    FetchShuffleBlockChunks {
        /// Application id.
        app_id: String,
        /// Executor id.
        exec_id: String,
        /// Shuffle id.
        shuffle_id: i32,
        /// Merge id of the shuffle.
        shuffle_merge_id: i32,
        /// Reduce partitions.
        reduce_ids: Vec<i32>,
        /// One row of chunk ids per reduce id.
        chunk_ids: Vec<Vec<i32>>,
    },
    /// 16: ask why a block's checksum did not match (§4.4).
    DiagnoseCorruption {
        /// Application id.
        app_id: String,
        /// Executor that wrote the map output.
        exec_id: String,
        /// Shuffle id.
        shuffle_id: i32,
        /// Map task attempt id.
        map_id: i64,
        /// Reduce partition.
        reduce_id: i32,
        /// Checksum the reader computed.
        checksum: i64,
        /// Checksum algorithm, e.g. `ADLER32`.
        algorithm: String,
    },
    /// 17: reply to `DiagnoseCorruption` (ordinal of table 2.3).
    CorruptionCause {
        /// 0 disk, 1 network, 2 unknown, 3 verify pass, 4 unsupported algorithm.
        cause: u8,
    },
    /// 18: reply to `PushBlockStream`.
    BlockPushReturnCode {
        /// 0 success, else a non-fatal push failure (table 2.3).
        return_code: u8,
        /// The failed block, `""` on success.
        failure_block_id: String,
    },
    /// 19: remove merged data (push-based shuffle), sent as `OneWayMessage`.
    RemoveShuffleMerge {
        /// Application id.
        app_id: String,
        /// Application attempt.
        app_attempt_id: i32,
        /// Shuffle id.
        shuffle_id: i32,
        /// Merge id of the shuffle (−1 = all).
        shuffle_merge_id: i32,
    },
}

// === impl Message ===

/// Spark's class names of the block-transfer messages, indexed by type byte (§2.1).
const TYPE_NAMES: [&str; 20] = [
    "OpenBlocks",
    "UploadBlock",
    "RegisterExecutor",
    "StreamHandle",
    "RegisterDriver",
    "ShuffleServiceHeartbeat",
    "UploadBlockStream",
    "RemoveBlocks",
    "BlocksRemoved",
    "FetchShuffleBlocks",
    "GetLocalDirsForExecutors",
    "LocalDirsForExecutors",
    "PushBlockStream",
    "FinalizeShuffleMerge",
    "MergeStatuses",
    "FetchShuffleBlockChunks",
    "DiagnoseCorruption",
    "CorruptionCause",
    "BlockPushReturnCode",
    "RemoveShuffleMerge",
];

impl Message {
    /// The encoded message as one buffer, e.g. for an `RpcResponse` body.
    pub fn to_bytes(&self) -> Bytes {
        let mut dst = BytesMut::new();
        self.encode(&mut dst);
        dst.freeze()
    }

    /// The message's type byte (§2.1).
    pub fn type_id(&self) -> u8 {
        match self {
            Message::OpenBlocks { .. } => 0,
            Message::UploadBlock { .. } => 1,
            Message::RegisterExecutor { .. } => 2,
            Message::StreamHandle { .. } => 3,
            Message::RegisterDriver { .. } => 4,
            Message::ShuffleServiceHeartbeat { .. } => 5,
            Message::UploadBlockStream { .. } => 6,
            Message::RemoveBlocks { .. } => 7,
            Message::BlocksRemoved { .. } => 8,
            Message::FetchShuffleBlocks { .. } => 9,
            Message::GetLocalDirsForExecutors { .. } => 10,
            Message::LocalDirsForExecutors { .. } => 11,
            Message::PushBlockStream { .. } => 12,
            Message::FinalizeShuffleMerge { .. } => 13,
            Message::MergeStatuses { .. } => 14,
            Message::FetchShuffleBlockChunks { .. } => 15,
            Message::DiagnoseCorruption { .. } => 16,
            Message::CorruptionCause { .. } => 17,
            Message::BlockPushReturnCode { .. } => 18,
            Message::RemoveShuffleMerge { .. } => 19,
        }
    }

    /// Spark's class name of the message, e.g. `"OpenBlocks"`.
    pub fn type_name(&self) -> &'static str {
        TYPE_NAMES
            .get(usize::from(self.type_id()))
            .copied()
            .unwrap_or("Unknown")
    }

    /// Whether the message encoded in `body` only opens a stream or reads state
    /// (`OpenBlocks`, `FetchShuffleBlocks`, `GetLocalDirsForExecutors`), from its type byte
    /// alone: such a request may be answered ahead of chunk requests that arrived before it,
    /// since nothing it does changes what those chunks serve.
    pub fn is_read_only_open(body: &[u8]) -> bool {
        matches!(body.first(), Some(0 | 9 | 10))
    }

    /// Whether the message encoded in `body` is a `RegisterExecutor`, from its type byte.
    pub fn is_register_executor(body: &[u8]) -> bool {
        body.first() == Some(&2)
    }

    /// The class name of the message encoded in `body`, from its type byte alone (for
    /// metrics labels before or without decoding); `"Unknown"` for anything else.
    pub fn type_name_of(body: &[u8]) -> &'static str {
        body.first()
            .and_then(|&ty| TYPE_NAMES.get(usize::from(ty)))
            .copied()
            .unwrap_or("Unknown")
    }

    /// The appId the message claims, if it has one (checked against the authenticated
    /// client id, §3.1).
    pub fn app_id(&self) -> Option<&str> {
        match self {
            Message::OpenBlocks { app_id, .. }
            | Message::UploadBlock { app_id, .. }
            | Message::RegisterExecutor { app_id, .. }
            | Message::RegisterDriver { app_id, .. }
            | Message::ShuffleServiceHeartbeat { app_id }
            | Message::RemoveBlocks { app_id, .. }
            | Message::FetchShuffleBlocks { app_id, .. }
            | Message::GetLocalDirsForExecutors { app_id, .. }
            | Message::PushBlockStream { app_id, .. }
            | Message::FinalizeShuffleMerge { app_id, .. }
            | Message::FetchShuffleBlockChunks { app_id, .. }
            | Message::DiagnoseCorruption { app_id, .. }
            | Message::RemoveShuffleMerge { app_id, .. } => Some(app_id),
            Message::StreamHandle { .. }
            | Message::UploadBlockStream { .. }
            | Message::BlocksRemoved { .. }
            | Message::LocalDirsForExecutors { .. }
            | Message::MergeStatuses { .. }
            | Message::CorruptionCause { .. }
            | Message::BlockPushReturnCode { .. } => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests;
