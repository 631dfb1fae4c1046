//! What the daemon does with each request, independent of the socket: block-transfer RPCs
//! (`RegisterExecutor`, `OpenBlocks`, `FetchShuffleBlocks`, `RemoveBlocks`,
//! `GetLocalDirsForExecutors`, `DiagnoseCorruption`, …), one-way messages and chunk
//! resolution. Protocol reference §3.
//!
//! Replies are values ([`Failure`] carries the text Spark shows its user); the connection
//! layer turns them into frames. Requests that touch the disk beyond one open (registration,
//! removal, diagnosis) run on tokio's blocking pool; a registration then waits for its journal
//! sync without holding a thread.

use std::sync::Arc;

use bytes::Bytes;
use tracing::debug;

use crate::auth::is_auth_payload;
use crate::budget::ByteBudget;
use crate::config::Config;
use crate::registry::Executor;
use crate::stats::Stats;
use crate::store::{self, Segment, Store};
use crate::stream::{self, ChunkPlan, Chunks, StreamIds, Streams};
use crate::wire::{self, BlockId, Message};

/// Text of the failure for push-based shuffle requests (YARN only), as Spark's service.
const PUSH_UNSUPPORTED: &str = "Cannot handle shuffle block merge: push-based shuffle is not supported by this service (it is only enabled on YARN)";

/// A failed request: a label for logs and metrics and the message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Short label (`unknown_executor`, `bad_message`, …).
    pub kind: &'static str,
    /// Text sent to the client.
    pub message: String,
}

impl Failure {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<store::Error> for Failure {
    fn from(e: store::Error) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}

impl From<stream::Error> for Failure {
    fn from(e: stream::Error) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}

impl From<wire::Error> for Failure {
    fn from(e: wire::Error) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}

/// A resolved chunk, ready to send.
#[derive(Debug)]
pub struct Chunk {
    /// The bytes to send, as an open file range.
    pub segment: Segment,
    /// Whether it is an RDD block (for counters).
    pub rdd: bool,
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Service {
    /// Blocks on disk and registrations.
    pub store: Store,
    /// Counters.
    pub stats: Stats,
    /// Source of stream ids.
    pub stream_ids: StreamIds,
    /// Limits and timeouts.
    pub config: Config,
    /// The global bound on bytes held in read buffers beyond each connection's allowance.
    pub read_budget: ByteBudget,
    /// The global bound on bytes kept by open streams (shared by every connection's table).
    pub stream_budget: Arc<ByteBudget>,
}

impl Service {
    /// Handles the payload of an `RpcRequest`: `Ok` is the `RpcResponse` payload.
    ///
    /// # Errors
    /// Every refusal, as the `RpcFailure` to send.
    pub async fn rpc(
        self: &Arc<Self>,
        body: &[u8],
        streams: &mut Streams,
        client: Option<&str>,
    ) -> Result<Bytes, Failure> {
        let message = Message::decode(body).map_err(|e| match (&e, client) {
            // Spark's auth handshake on a connection that has none: the application has
            // `spark.authenticate` on, this service has no secrets. Java's service answers
            // only "Unknown message type: -22"; we keep that and say why.
            (wire::Error::UnknownMessageType { .. }, None) if is_auth_payload(body) => {
                Failure::new(
                    "auth_not_enabled",
                    format!(
                        "{e} (an authentication handshake: the application has spark.authenticate \
                         on, but this shuffle service has no secrets; start it with \
                         --auth-secret-file, --auth-secrets-dir or --auth-from-pods)"
                    ),
                )
            }
            _ => e.into(),
        })?;
        self.rpc_message(message, streams, client).await
    }

    /// [`Service::rpc`] for a message already decoded.
    ///
    /// # Errors
    /// Every refusal, as the `RpcFailure` to send.
    pub async fn rpc_message(
        self: &Arc<Self>,
        message: Message,
        streams: &mut Streams,
        client: Option<&str>,
    ) -> Result<Bytes, Failure> {
        // With authentication, a connection may only act for the app it authenticated as.
        if let (Some(client), Some(app)) = (client, message.app_id())
            && client != app
        {
            return Err(Failure::new(
                "unauthorized_app",
                format!(
                    "Client for {} not authorized for application {}.",
                    store::truncate(client),
                    store::truncate(app)
                ),
            ));
        }
        match message {
            Message::RegisterExecutor {
                app_id,
                exec_id,
                info,
            } => {
                // Validation and the write run on the blocking pool (they touch the file
                // system); the wait for the journal's sync holds no thread.
                let service = Arc::clone(self);
                let (executor, pending) = tokio::task::spawn_blocking(move || {
                    service.store.begin_register(
                        &app_id,
                        &exec_id,
                        &info.local_dirs,
                        info.sub_dirs_per_local_dir,
                        &info.shuffle_manager,
                    )
                })
                .await
                .map_err(|e| {
                    Failure::new("internal", format!("registration task failed: {e}"))
                })??;
                pending.durable().await.map_err(store::Error::from)?;
                Stats::inc(&self.stats.registrations);
                debug!(app = %executor.app_id, exec = %executor.exec_id,
                    dirs = ?executor.local_dirs, "executor registered");
                Ok(Bytes::new())
            }
            Message::OpenBlocks {
                app_id,
                exec_id,
                block_ids,
            } => {
                let executor = self.store.executor(&app_id, &exec_id)?;
                let chunks = open_blocks_chunks(&block_ids)?;
                let handle = self.open_stream(streams, executor, chunks)?;
                Stats::inc(&self.stats.open_blocks);
                Ok(handle)
            }
            Message::FetchShuffleBlocks {
                app_id,
                exec_id,
                shuffle_id,
                map_ids,
                reduce_ids,
                batch_fetch_enabled,
            } => {
                let executor = self.store.executor(&app_id, &exec_id)?;
                let chunks = Chunks::Shuffle {
                    shuffle_id,
                    map_ids,
                    reduce_ids,
                    batch: batch_fetch_enabled,
                    map_pos: 0,
                    reduce_pos: 0,
                };
                let handle = self.open_stream(streams, executor, chunks)?;
                Stats::inc(&self.stats.fetch_shuffle_blocks);
                if batch_fetch_enabled {
                    Stats::inc(&self.stats.batch_fetches);
                }
                Ok(handle)
            }
            Message::RemoveBlocks {
                app_id,
                exec_id,
                block_ids,
            } => {
                let executor = self.store.executor(&app_id, &exec_id)?;
                let service = Arc::clone(self);
                let removed = tokio::task::spawn_blocking(move || {
                    service.store.remove_files(&executor, &block_ids)
                })
                .await
                .map_err(|e| Failure::new("internal", format!("removal task failed: {e}")))?;
                Stats::inc(&self.stats.remove_blocks);
                Stats::add(&self.stats.blocks_removed, removed as u64);
                let num_removed_blocks = i32::try_from(removed).unwrap_or(i32::MAX);
                Ok(Message::BlocksRemoved { num_removed_blocks }.to_bytes())
            }
            Message::GetLocalDirsForExecutors { app_id, exec_ids } => {
                let mut num_local_dirs_by_exec = Vec::with_capacity(exec_ids.len());
                let mut all_local_dirs = Vec::new();
                for exec_id in &exec_ids {
                    let executor = self.store.executor(&app_id, exec_id)?;
                    num_local_dirs_by_exec
                        .push(i32::try_from(executor.local_dirs.len()).unwrap_or(0));
                    all_local_dirs.extend(executor.local_dirs.iter().cloned());
                }
                Stats::inc(&self.stats.local_dirs_requests);
                Ok(Message::LocalDirsForExecutors {
                    exec_ids,
                    num_local_dirs_by_exec,
                    all_local_dirs,
                }
                .to_bytes())
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
                let executor = self.store.executor(&app_id, &exec_id)?;
                let service = Arc::clone(self);
                let cause = tokio::task::spawn_blocking(move || {
                    service.store.diagnose(
                        &executor, shuffle_id, map_id, reduce_id, checksum, &algorithm,
                    )
                })
                .await
                .map_err(|e| Failure::new("internal", format!("diagnosis task failed: {e}")))?;
                Stats::inc(&self.stats.diagnoses);
                Ok(Message::CorruptionCause { cause: cause as u8 }.to_bytes())
            }
            Message::FinalizeShuffleMerge { .. }
            | Message::FetchShuffleBlockChunks { .. }
            | Message::PushBlockStream { .. }
            | Message::RemoveShuffleMerge { .. } => {
                Err(Failure::new("push_unsupported", PUSH_UNSUPPORTED))
            }
            Message::RegisterDriver { .. } | Message::ShuffleServiceHeartbeat { .. } => {
                Err(Failure::new(
                    "unexpected_message",
                    format!(
                        "Unexpected message: {} (sent only by Spark's Mesos backend; this service finds out about ended applications itself)",
                        message.type_name()
                    ),
                ))
            }
            other => Err(Failure::new(
                "unexpected_message",
                format!("Unexpected message: {}", other.type_name()),
            )),
        }
    }

    /// Handles a `OneWayMessage` payload (no reply). Returns what is worth logging, if
    /// anything.
    pub fn one_way(&self, body: &[u8]) -> Option<Failure> {
        match Message::decode(body) {
            // Sent by drivers with push-based shuffle only; nothing was merged here.
            Ok(Message::RemoveShuffleMerge { .. }) => None,
            Ok(other) => Some(Failure::new(
                "unexpected_message",
                format!("Unexpected one-way message: {}", other.type_name()),
            )),
            Err(e) => Some(e.into()),
        }
    }

    fn open_stream(
        &self,
        streams: &mut Streams,
        executor: Arc<Executor>,
        chunks: Chunks,
    ) -> Result<Bytes, Failure> {
        let (stream_id, total) = streams.open(&self.stream_ids, executor, chunks)?;
        let num_chunks = i32::try_from(total)
            .map_err(|_| Failure::new("too_many_chunks", "More than 2^31 chunks in one request"))?;
        Ok(Message::StreamHandle {
            stream_id,
            num_chunks,
        }
        .to_bytes())
    }

    /// Resolves chunk `index` of `stream_id` on this connection to an open file range.
    /// Blocking, but cheap: for the first chunk of a map output in a stream one index-cache
    /// lookup, one `open` and one `fstat`; for the following chunks of the same map output
    /// (kept by `streams`) one `fstat`.
    ///
    /// # Errors
    /// Stream errors (unknown, out of order) and store errors (missing or corrupt files).
    pub fn chunk(
        &self,
        streams: &mut Streams,
        stream_id: i64,
        index: i64,
    ) -> Result<Chunk, Failure> {
        let (executor, plan) = streams.next_chunk(stream_id, index)?;
        let segment = match plan {
            ChunkPlan::Shuffle {
                shuffle_id,
                map_id,
                start,
                end,
            } => {
                let kept = streams.kept_output(stream_id, shuffle_id, map_id);
                let segment = match kept.filter(|output| output.is_current()) {
                    Some(output) => output.segment(start, end),
                    None => self
                        .store
                        .map_output(&executor, shuffle_id, map_id)
                        .and_then(|output| {
                            Stats::inc(&self.stats.map_outputs_opened);
                            let segment = output.segment(start, end);
                            streams.keep_output(stream_id, output);
                            segment
                        }),
                };
                // Also after a failure: the stream may have just ended.
                streams.release_ended_output();
                segment?
            }
            ChunkPlan::Rdd {
                rdd_id,
                split_index,
            } => {
                self.store
                    .rdd_segment(&executor, rdd_id, split_index)
                    .map_err(|e| match e {
                        // Spark's wording for an RDD block that is not on disk.
                        store::Error::DataMissing { path } => Failure::new(
                            "chunk_not_found",
                            format!("Chunk was not found: {}", path.display()),
                        ),
                        other => other.into(),
                    })?
            }
        };
        Ok(Chunk {
            segment,
            rdd: matches!(plan, ChunkPlan::Rdd { .. }),
        })
    }
}

/// The chunks of an `OpenBlocks`: all ids must parse and be of the first id's kind;
/// shuffle ids must all belong to one shuffle (as Spark's service requires).
fn open_blocks_chunks(block_ids: &[String]) -> Result<Chunks, Failure> {
    let parsed = block_ids
        .iter()
        .map(|id| BlockId::parse(id))
        .collect::<Result<Vec<_>, _>>()?;
    let mut plans = Vec::with_capacity(parsed.len());
    let first = parsed.first().copied();
    for (id, text) in parsed.iter().zip(block_ids) {
        let plan = match (first, *id) {
            (
                Some(BlockId::Shuffle {
                    shuffle_id: first_shuffle,
                    ..
                }),
                BlockId::Shuffle {
                    shuffle_id,
                    map_id,
                    reduce_id,
                },
            ) => {
                if shuffle_id != first_shuffle {
                    return Err(Failure::new(
                        "mixed_block_ids",
                        format!(
                            "Expected shuffleId={first_shuffle}, got: {}",
                            store::truncate(text)
                        ),
                    ));
                }
                let end = reduce_id.checked_add(1).ok_or_else(|| {
                    Failure::new(
                        "invalid_block_id",
                        format!("Invalid block id: {}", store::truncate(text)),
                    )
                })?;
                ChunkPlan::Shuffle {
                    shuffle_id,
                    map_id,
                    start: reduce_id,
                    end,
                }
            }
            (
                Some(BlockId::Rdd { .. }),
                BlockId::Rdd {
                    rdd_id,
                    split_index,
                },
            ) => ChunkPlan::Rdd {
                rdd_id,
                split_index,
            },
            (_, BlockId::ShuffleChunk { .. }) => {
                return Err(Failure::new("push_unsupported", PUSH_UNSUPPORTED));
            }
            _ => {
                return Err(Failure::new(
                    "mixed_block_ids",
                    format!(
                        "Unexpected block id format in OpenBlocks: {}",
                        store::truncate(text)
                    ),
                ));
            }
        };
        plans.push(plan);
    }
    Ok(Chunks::Blocks(plans))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn open_blocks_kinds() {
        let Chunks::Blocks(plans) =
            open_blocks_chunks(&ids(&["shuffle_1_5_2", "shuffle_1_6_0"])).unwrap()
        else {
            panic!("expected blocks")
        };
        assert_eq!(
            plans[1],
            ChunkPlan::Shuffle {
                shuffle_id: 1,
                map_id: 6,
                start: 0,
                end: 1
            }
        );
        assert!(open_blocks_chunks(&ids(&["rdd_3_4", "rdd_3_5"])).is_ok());
        for bad in [
            &["shuffle_1_5_2", "shuffle_2_5_2"][..],
            &["shuffle_1_5_2", "rdd_1_2"],
            &["rdd_1_2", "shuffle_1_5_2"],
            &["shuffle_1_5_0_3"],
            &["shuffleChunk_1_0_2_3"],
            &["nonsense"],
            &["rdd_1_2", "../x"],
        ] {
            let err = open_blocks_chunks(&ids(bad)).unwrap_err();
            assert!(!err.message.is_empty(), "{bad:?}");
        }
    }
}
