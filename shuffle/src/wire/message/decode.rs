//! [`Message::decode`]: reading every message type, then the structural checks.

use bytes::Bytes;

use super::{ExecutorShuffleInfo, Message};
use crate::wire::Error;
use crate::wire::reader::Reader;
use crate::wire::roaring;

/// Minimum encoded size of one portable RoaringBitmap (cookie and container count).
const MIN_BITMAP_BYTES: usize = 8;

// === impl Message ===

impl Message {
    /// Decode an RPC body.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownMessageType`] for a type byte outside 0..=19 (displayed as Java does,
    /// `Unknown message type: -5` for an auth message), [`Error::Truncated`],
    /// [`Error::NegativeLength`] or [`Error::InvalidUtf8`] for a bad field, and
    /// [`Error::Malformed`] for an inconsistent message (see the module docs).
    pub fn decode(body: &[u8]) -> Result<Message, Error> {
        let mut r = Reader::new(body);
        let ty = r.get_u8("message type")?;
        // Struct fields are evaluated in the order written, which is the wire order.
        let msg = match ty {
            0 => Message::OpenBlocks {
                app_id: r.get_string("OpenBlocks.appId")?,
                exec_id: r.get_string("OpenBlocks.execId")?,
                block_ids: r.get_string_array("OpenBlocks.blockIds")?,
            },
            1 => Message::UploadBlock {
                app_id: r.get_string("UploadBlock.appId")?,
                exec_id: r.get_string("UploadBlock.execId")?,
                block_id: r.get_string("UploadBlock.blockId")?,
                metadata: Bytes::copy_from_slice(r.get_bytes("UploadBlock.metadata")?),
                block_data: Bytes::copy_from_slice(r.get_bytes("UploadBlock.blockData")?),
            },
            2 => Message::RegisterExecutor {
                app_id: r.get_string("RegisterExecutor.appId")?,
                exec_id: r.get_string("RegisterExecutor.execId")?,
                info: ExecutorShuffleInfo {
                    local_dirs: r.get_string_array("ExecutorShuffleInfo.localDirs")?,
                    sub_dirs_per_local_dir: r.get_i32("ExecutorShuffleInfo.subDirsPerLocalDir")?,
                    shuffle_manager: r.get_string("ExecutorShuffleInfo.shuffleManager")?,
                },
            },
            3 => Message::StreamHandle {
                stream_id: r.get_i64("StreamHandle.streamId")?,
                num_chunks: r.get_i32("StreamHandle.numChunks")?,
            },
            4 => Message::RegisterDriver {
                app_id: r.get_string("RegisterDriver.appId")?,
                heartbeat_timeout_ms: r.get_i64("RegisterDriver.heartbeatTimeoutMs")?,
            },
            5 => Message::ShuffleServiceHeartbeat {
                app_id: r.get_string("ShuffleServiceHeartbeat.appId")?,
            },
            6 => Message::UploadBlockStream {
                block_id: r.get_string("UploadBlockStream.blockId")?,
                metadata: Bytes::copy_from_slice(r.get_bytes("UploadBlockStream.metadata")?),
            },
            7 => Message::RemoveBlocks {
                app_id: r.get_string("RemoveBlocks.appId")?,
                exec_id: r.get_string("RemoveBlocks.execId")?,
                block_ids: r.get_string_array("RemoveBlocks.blockIds")?,
            },
            8 => Message::BlocksRemoved {
                num_removed_blocks: r.get_i32("BlocksRemoved.numRemovedBlocks")?,
            },
            9 => Message::FetchShuffleBlocks {
                app_id: r.get_string("FetchShuffleBlocks.appId")?,
                exec_id: r.get_string("FetchShuffleBlocks.execId")?,
                shuffle_id: r.get_i32("FetchShuffleBlocks.shuffleId")?,
                map_ids: r.get_i64_array("FetchShuffleBlocks.mapIds")?,
                reduce_ids: r.get_i32_array_array("FetchShuffleBlocks.reduceIds")?,
                batch_fetch_enabled: r.get_bool("FetchShuffleBlocks.batchFetchEnabled")?,
            },
            10 => Message::GetLocalDirsForExecutors {
                app_id: r.get_string("GetLocalDirsForExecutors.appId")?,
                exec_ids: r.get_string_array("GetLocalDirsForExecutors.execIds")?,
            },
            11 => Message::LocalDirsForExecutors {
                exec_ids: r.get_string_array("LocalDirsForExecutors.execIds")?,
                num_local_dirs_by_exec: r
                    .get_i32_array("LocalDirsForExecutors.numLocalDirsByExec")?,
                all_local_dirs: r.get_string_array("LocalDirsForExecutors.allLocalDirs")?,
            },
            12 => Message::PushBlockStream {
                app_id: r.get_string("PushBlockStream.appId")?,
                app_attempt_id: r.get_i32("PushBlockStream.appAttemptId")?,
                shuffle_id: r.get_i32("PushBlockStream.shuffleId")?,
                shuffle_merge_id: r.get_i32("PushBlockStream.shuffleMergeId")?,
                map_index: r.get_i32("PushBlockStream.mapIndex")?,
                reduce_id: r.get_i32("PushBlockStream.reduceId")?,
                index: r.get_i32("PushBlockStream.index")?,
            },
            13 => Message::FinalizeShuffleMerge {
                app_id: r.get_string("FinalizeShuffleMerge.appId")?,
                app_attempt_id: r.get_i32("FinalizeShuffleMerge.appAttemptId")?,
                shuffle_id: r.get_i32("FinalizeShuffleMerge.shuffleId")?,
                shuffle_merge_id: r.get_i32("FinalizeShuffleMerge.shuffleMergeId")?,
            },
            14 => Message::MergeStatuses {
                shuffle_id: r.get_i32("MergeStatuses.shuffleId")?,
                shuffle_merge_id: r.get_i32("MergeStatuses.shuffleMergeId")?,
                bitmaps: get_bitmaps(&mut r, "MergeStatuses.bitmaps")?,
                reduce_ids: r.get_i32_array("MergeStatuses.reduceIds")?,
                sizes: r.get_i64_array("MergeStatuses.sizes")?,
            },
            15 => Message::FetchShuffleBlockChunks {
                app_id: r.get_string("FetchShuffleBlockChunks.appId")?,
                exec_id: r.get_string("FetchShuffleBlockChunks.execId")?,
                shuffle_id: r.get_i32("FetchShuffleBlockChunks.shuffleId")?,
                shuffle_merge_id: r.get_i32("FetchShuffleBlockChunks.shuffleMergeId")?,
                reduce_ids: r.get_i32_array("FetchShuffleBlockChunks.reduceIds")?,
                chunk_ids: r.get_i32_array_array("FetchShuffleBlockChunks.chunkIds")?,
            },
            16 => Message::DiagnoseCorruption {
                app_id: r.get_string("DiagnoseCorruption.appId")?,
                exec_id: r.get_string("DiagnoseCorruption.execId")?,
                shuffle_id: r.get_i32("DiagnoseCorruption.shuffleId")?,
                map_id: r.get_i64("DiagnoseCorruption.mapId")?,
                reduce_id: r.get_i32("DiagnoseCorruption.reduceId")?,
                checksum: r.get_i64("DiagnoseCorruption.checksum")?,
                algorithm: r.get_string("DiagnoseCorruption.algorithm")?,
            },
            17 => Message::CorruptionCause {
                cause: r.get_u8("CorruptionCause.cause")?,
            },
            18 => Message::BlockPushReturnCode {
                return_code: r.get_u8("BlockPushReturnCode.returnCode")?,
                failure_block_id: r.get_string("BlockPushReturnCode.failureBlockId")?,
            },
            19 => Message::RemoveShuffleMerge {
                app_id: r.get_string("RemoveShuffleMerge.appId")?,
                app_attempt_id: r.get_i32("RemoveShuffleMerge.appAttemptId")?,
                shuffle_id: r.get_i32("RemoveShuffleMerge.shuffleId")?,
                shuffle_merge_id: r.get_i32("RemoveShuffleMerge.shuffleMergeId")?,
            },
            ty => {
                return Err(Error::UnknownMessageType {
                    ty: i8::from_be_bytes([ty]),
                });
            }
        };
        msg.check_consistency()?;
        Ok(msg)
    }

    /// Structural checks applied after decoding (see the module docs).
    fn check_consistency(&self) -> Result<(), Error> {
        match self {
            Message::FetchShuffleBlocks {
                map_ids,
                reduce_ids,
                batch_fetch_enabled,
                ..
            } => {
                let what = "FetchShuffleBlocks";
                same_len(
                    what,
                    "reduceIds rows",
                    reduce_ids.len(),
                    "mapIds",
                    map_ids.len(),
                )?;
                if *batch_fetch_enabled {
                    for row in reduce_ids {
                        match row.as_slice() {
                            [start, end] if 0 <= *start && start < end => {}
                            _ => {
                                return Err(Error::Malformed {
                                    what,
                                    detail: format!(
                                        "batch reduce ids must be [start, end) with \
                                         0 <= start < end, got {row:?}"
                                    ),
                                });
                            }
                        }
                    }
                }
                Ok(())
            }
            Message::FetchShuffleBlockChunks {
                reduce_ids,
                chunk_ids,
                ..
            } => same_len(
                "FetchShuffleBlockChunks",
                "chunkIds rows",
                chunk_ids.len(),
                "reduceIds",
                reduce_ids.len(),
            ),
            Message::LocalDirsForExecutors {
                exec_ids,
                num_local_dirs_by_exec,
                all_local_dirs,
            } => {
                let what = "LocalDirsForExecutors";
                same_len(
                    what,
                    "numLocalDirsByExec",
                    num_local_dirs_by_exec.len(),
                    "execIds",
                    exec_ids.len(),
                )?;
                let mut total: i64 = 0;
                for &n in num_local_dirs_by_exec {
                    if n < 0 {
                        return Err(Error::Malformed {
                            what,
                            detail: format!("negative dir count {n}"),
                        });
                    }
                    total += i64::from(n);
                }
                if i64::try_from(all_local_dirs.len()) != Ok(total) {
                    return Err(Error::Malformed {
                        what,
                        detail: format!(
                            "dir counts add up to {total} but {} dirs were sent",
                            all_local_dirs.len()
                        ),
                    });
                }
                Ok(())
            }
            Message::MergeStatuses {
                bitmaps,
                reduce_ids,
                sizes,
                ..
            } => {
                let what = "MergeStatuses";
                same_len(
                    what,
                    "reduceIds",
                    reduce_ids.len(),
                    "bitmaps",
                    bitmaps.len(),
                )?;
                same_len(what, "sizes", sizes.len(), "bitmaps", bitmaps.len())
            }
            _ => Ok(()),
        }
    }
}

/// `Malformed` unless two arrays of a message have the same length.
fn same_len(what: &'static str, a: &str, a_len: usize, b: &str, b_len: usize) -> Result<(), Error> {
    if a_len == b_len {
        Ok(())
    } else {
        Err(Error::Malformed {
            what,
            detail: format!("{a_len} {a} but {b_len} {b}"),
        })
    }
}

/// A `RoaringBitmap[]`: `i32` count then the bitmaps, each kept as its raw bytes.
fn get_bitmaps(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<Bytes>, Error> {
    let count = r.get_count(what, MIN_BITMAP_BYTES)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = roaring::serialized_len(r.rest())?;
        out.push(Bytes::copy_from_slice(r.take(len, what)?));
    }
    Ok(out)
}
