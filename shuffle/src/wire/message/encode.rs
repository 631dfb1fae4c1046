//! [`Message::encode`]: writing every message type in wire order.

use bytes::{BufMut, BytesMut};

use super::Message;
use crate::wire::writer::{
    len_i32, put_bytes, put_i32_array, put_i32_array_array, put_i64_array, put_string,
    put_string_array,
};

// === impl Message ===

impl Message {
    /// Appends the encoded message (type byte and fields) to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(self.type_id());
        match self {
            Message::OpenBlocks {
                app_id,
                exec_id,
                block_ids,
            }
            | Message::RemoveBlocks {
                app_id,
                exec_id,
                block_ids,
            } => {
                put_string(dst, app_id);
                put_string(dst, exec_id);
                put_string_array(dst, block_ids);
            }
            Message::UploadBlock {
                app_id,
                exec_id,
                block_id,
                metadata,
                block_data,
            } => {
                put_string(dst, app_id);
                put_string(dst, exec_id);
                put_string(dst, block_id);
                put_bytes(dst, metadata);
                put_bytes(dst, block_data);
            }
            Message::RegisterExecutor {
                app_id,
                exec_id,
                info,
            } => {
                put_string(dst, app_id);
                put_string(dst, exec_id);
                put_string_array(dst, &info.local_dirs);
                dst.put_i32(info.sub_dirs_per_local_dir);
                put_string(dst, &info.shuffle_manager);
            }
            Message::StreamHandle {
                stream_id,
                num_chunks,
            } => {
                dst.put_i64(*stream_id);
                dst.put_i32(*num_chunks);
            }
            Message::RegisterDriver {
                app_id,
                heartbeat_timeout_ms,
            } => {
                put_string(dst, app_id);
                dst.put_i64(*heartbeat_timeout_ms);
            }
            Message::ShuffleServiceHeartbeat { app_id } => put_string(dst, app_id),
            Message::UploadBlockStream { block_id, metadata } => {
                put_string(dst, block_id);
                put_bytes(dst, metadata);
            }
            Message::BlocksRemoved { num_removed_blocks } => dst.put_i32(*num_removed_blocks),
            Message::FetchShuffleBlocks {
                app_id,
                exec_id,
                shuffle_id,
                map_ids,
                reduce_ids,
                batch_fetch_enabled,
            } => {
                put_string(dst, app_id);
                put_string(dst, exec_id);
                dst.put_i32(*shuffle_id);
                put_i64_array(dst, map_ids);
                put_i32_array_array(dst, reduce_ids);
                dst.put_u8(u8::from(*batch_fetch_enabled));
            }
            Message::GetLocalDirsForExecutors { app_id, exec_ids } => {
                put_string(dst, app_id);
                put_string_array(dst, exec_ids);
            }
            Message::LocalDirsForExecutors {
                exec_ids,
                num_local_dirs_by_exec,
                all_local_dirs,
            } => {
                put_string_array(dst, exec_ids);
                put_i32_array(dst, num_local_dirs_by_exec);
                put_string_array(dst, all_local_dirs);
            }
            Message::PushBlockStream {
                app_id,
                app_attempt_id,
                shuffle_id,
                shuffle_merge_id,
                map_index,
                reduce_id,
                index,
            } => {
                put_string(dst, app_id);
                for v in [
                    app_attempt_id,
                    shuffle_id,
                    shuffle_merge_id,
                    map_index,
                    reduce_id,
                    index,
                ] {
                    dst.put_i32(*v);
                }
            }
            Message::FinalizeShuffleMerge {
                app_id,
                app_attempt_id,
                shuffle_id,
                shuffle_merge_id,
            }
            | Message::RemoveShuffleMerge {
                app_id,
                app_attempt_id,
                shuffle_id,
                shuffle_merge_id,
            } => {
                put_string(dst, app_id);
                dst.put_i32(*app_attempt_id);
                dst.put_i32(*shuffle_id);
                dst.put_i32(*shuffle_merge_id);
            }
            Message::MergeStatuses {
                shuffle_id,
                shuffle_merge_id,
                bitmaps,
                reduce_ids,
                sizes,
            } => {
                dst.put_i32(*shuffle_id);
                dst.put_i32(*shuffle_merge_id);
                dst.put_i32(len_i32(bitmaps.len()));
                for bitmap in bitmaps {
                    dst.put_slice(bitmap);
                }
                put_i32_array(dst, reduce_ids);
                put_i64_array(dst, sizes);
            }
            Message::FetchShuffleBlockChunks {
                app_id,
                exec_id,
                shuffle_id,
                shuffle_merge_id,
                reduce_ids,
                chunk_ids,
            } => {
                put_string(dst, app_id);
                put_string(dst, exec_id);
                dst.put_i32(*shuffle_id);
                dst.put_i32(*shuffle_merge_id);
                put_i32_array(dst, reduce_ids);
                put_i32_array_array(dst, chunk_ids);
            }
            Message::DiagnoseCorruption {
                app_id,
                exec_id,
                shuffle_id,
                map_id,
                reduce_id,
                checksum,
                algorithm,
            } => {
                put_string(dst, app_id);
                put_string(dst, exec_id);
                dst.put_i32(*shuffle_id);
                dst.put_i64(*map_id);
                dst.put_i32(*reduce_id);
                dst.put_i64(*checksum);
                put_string(dst, algorithm);
            }
            Message::CorruptionCause { cause } => dst.put_u8(*cause),
            Message::BlockPushReturnCode {
                return_code,
                failure_block_id,
            } => {
                dst.put_u8(*return_code);
                put_string(dst, failure_block_id);
            }
        }
    }
}
