//! Streams: the chunks a successful `OpenBlocks`/`FetchShuffleBlocks` promised, served in
//! order by `ChunkFetchRequest`/`StreamRequest` on the connection that opened them.
//!
//! A stream keeps the request's own vectors and a cursor instead of one entry per chunk, so
//! its memory is the size of the request frame (bounded by the frame limit). Chunks must be
//! requested strictly in order 0, 1, 2, …; a stream is dropped after its last chunk is
//! handed out or when its connection closes (protocol reference §3.2). Streams live in a
//! per-connection table, so another connection can never read them.
//!
//! Bounds: at most `limit` open streams per connection, and the bytes open streams keep
//! ([`Chunks::heap_bytes`]) above [`STREAM_ALLOWANCE_BYTES`] per connection come from one
//! daemon-wide [`ByteBudget`], so clients that open streams with large requests and never
//! fetch them cannot grow the daemon without limit (connections × streams × frame size
//! otherwise), while ordinary fetches (a few KiB) never depend on the budget and are served
//! even when attackers have spent it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::budget::ByteBudget;
use crate::registry::Executor;
use crate::store::MapOutput;

/// What one chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkPlan {
    /// Reduce partitions `start..end` of one map output.
    Shuffle {
        /// Shuffle id.
        shuffle_id: i32,
        /// Map task attempt id.
        map_id: i64,
        /// First partition.
        start: i32,
        /// One past the last partition.
        end: i32,
    },
    /// A whole RDD block file.
    Rdd {
        /// RDD id.
        rdd_id: i32,
        /// Partition index.
        split_index: i32,
    },
}

/// The chunks of a stream, in order.
#[derive(Debug)]
pub enum Chunks {
    /// From `FetchShuffleBlocks`: row-major over `(map_ids[k], reduce_ids[k][j])`, or one
    /// range per map when `batch`.
    Shuffle {
        /// Shuffle id.
        shuffle_id: i32,
        /// Map ids, in request order.
        map_ids: Vec<i64>,
        /// Reduce ids per map (`[start, end)` pairs when `batch`).
        reduce_ids: Vec<Vec<i32>>,
        /// Batch fetch of contiguous ranges.
        batch: bool,
        /// Cursor: current map.
        map_pos: usize,
        /// Cursor: position within the current map's reduce ids.
        reduce_pos: usize,
    },
    /// From `OpenBlocks`: one chunk per block.
    Blocks(Vec<ChunkPlan>),
}

impl Chunks {
    /// Heap bytes the chunk list keeps (what a stream costs the daemon while it is open).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Chunks::Shuffle {
                map_ids,
                reduce_ids,
                ..
            } => {
                map_ids.capacity() * std::mem::size_of::<i64>()
                    + reduce_ids.capacity() * std::mem::size_of::<Vec<i32>>()
                    + reduce_ids
                        .iter()
                        .map(|r| r.capacity() * std::mem::size_of::<i32>())
                        .sum::<usize>()
            }
            Chunks::Blocks(blocks) => blocks.capacity() * std::mem::size_of::<ChunkPlan>(),
        }
    }

    /// How many chunks the stream has.
    pub fn count(&self) -> usize {
        match self {
            Chunks::Shuffle {
                map_ids,
                reduce_ids,
                batch,
                ..
            } => {
                if *batch {
                    map_ids.len()
                } else {
                    reduce_ids.iter().map(Vec::len).sum()
                }
            }
            Chunks::Blocks(blocks) => blocks.len(),
        }
    }

    /// The chunk at `index`, advancing the cursor. Must be called with 0, 1, 2, … in order.
    fn take(&mut self, index: usize) -> Option<ChunkPlan> {
        match self {
            Chunks::Blocks(blocks) => blocks.get(index).copied(),
            Chunks::Shuffle {
                shuffle_id,
                map_ids,
                reduce_ids,
                batch,
                map_pos,
                reduce_pos,
            } => {
                if *batch {
                    let map_id = *map_ids.get(index)?;
                    let range = reduce_ids.get(index)?;
                    let (start, end) = (*range.first()?, *range.get(1)?);
                    return Some(ChunkPlan::Shuffle {
                        shuffle_id: *shuffle_id,
                        map_id,
                        start,
                        end,
                    });
                }
                loop {
                    let reduces = reduce_ids.get(*map_pos)?;
                    if let Some(&reduce) = reduces.get(*reduce_pos) {
                        *reduce_pos += 1;
                        let map_id = *map_ids.get(*map_pos)?;
                        let end = reduce.checked_add(1)?;
                        return Some(ChunkPlan::Shuffle {
                            shuffle_id: *shuffle_id,
                            map_id,
                            start: reduce,
                            end,
                        });
                    }
                    *map_pos += 1;
                    *reduce_pos = 0;
                }
            }
        }
    }
}

/// One open stream.
#[derive(Debug)]
pub struct Stream {
    /// Whose files the chunks are.
    pub executor: Arc<Executor>,
    chunks: Chunks,
    next: usize,
    total: usize,
    /// Bytes taken from the stream budget.
    bytes: usize,
    /// Body bytes served from it so far ([`Streams::add_served`]).
    served: u64,
}

/// Why a chunk cannot be handed out. The text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No such stream on this connection (never opened, finished, or opened elsewhere).
    #[error("Requested chunk not available since streamId {stream_id} is closed")]
    UnknownStream {
        /// The stream id asked for.
        stream_id: i64,
    },
    /// Chunks must be requested in order.
    #[error("Received out-of-order chunk index {got} (expected {expected})")]
    OutOfOrder {
        /// Index asked for.
        got: i64,
        /// Index expected.
        expected: usize,
    },
    /// Past the last chunk (only reachable with a stream of zero chunks).
    #[error("Requested chunk index beyond end {total}")]
    BeyondEnd {
        /// Chunks in the stream.
        total: usize,
    },
    /// The daemon-wide budget of bytes held by open streams is spent.
    #[error(
        "The shuffle service holds too many open streams ({used} of {limit} bytes of stream \
         state in use; this request needs {need}); fetch or close some first, or retry later"
    )]
    StreamBudget {
        /// Bytes the new stream needs.
        need: usize,
        /// Bytes in use by all connections.
        used: usize,
        /// The budget.
        limit: usize,
    },
    /// The per-connection stream limit is reached.
    #[error("Too many open streams on this connection (limit {limit}); fetch or close some first")]
    TooManyStreams {
        /// The limit.
        limit: usize,
    },
}

impl Error {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::UnknownStream { .. } => "unknown_stream",
            Error::OutOfOrder { .. } => "out_of_order_chunk",
            Error::BeyondEnd { .. } => "chunk_beyond_end",
            Error::TooManyStreams { .. } => "too_many_streams",
            Error::StreamBudget { .. } => "stream_budget",
        }
    }
}

/// Process-wide source of stream ids: a random non-negative 63-bit start, then increments,
/// so ids are unique in the process and not predictable across restarts.
#[derive(Debug)]
pub struct StreamIds(AtomicI64);

impl StreamIds {
    /// Starts at a random point (from the OS's random source) in the lower half of the
    /// non-negative range, leaving room for 2^62 increments.
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        // A failure leaves the seed at zero: ids are still unique, only predictable.
        let _ = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
        Self(AtomicI64::new(
            (i64::from_le_bytes(seed) & (i64::MAX >> 1)).max(1),
        ))
    }

    fn next(&self) -> i64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

impl Default for StreamIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes of stream state each connection keeps without drawing on the shared budget.
pub const STREAM_ALLOWANCE_BYTES: usize = 64 * 1024;

/// Bytes of `held` that are charged to the budget.
fn charged(held: usize) -> usize {
    held.saturating_sub(STREAM_ALLOWANCE_BYTES)
}

/// The open streams of one connection.
#[derive(Debug)]
pub struct Streams {
    open: HashMap<i64, Stream>,
    limit: usize,
    budget: Arc<ByteBudget>,
    /// Bytes kept by the open streams.
    held: usize,
    /// The map output the last shuffle chunk came from, and its stream: the next chunk of
    /// that stream from the same map output is served without opening it again. One per
    /// connection (so at most one extra open file each), dropped when its stream ends.
    output: Option<(i64, MapOutput)>,
}

impl Streams {
    /// An empty table allowing `limit` open streams, with an unbounded byte budget.
    pub fn new(limit: usize) -> Self {
        Self::with_budget(limit, Arc::new(ByteBudget::new(usize::MAX)))
    }

    /// An empty table allowing `limit` open streams, whose bytes come from `budget` (shared
    /// by every connection).
    pub fn with_budget(limit: usize, budget: Arc<ByteBudget>) -> Self {
        Self {
            open: HashMap::new(),
            limit,
            budget,
            held: 0,
            output: None,
        }
    }

    /// The map output kept for stream `stream_id`, if it is (`shuffle_id`, `map_id`).
    pub fn kept_output(&self, stream_id: i64, shuffle_id: i32, map_id: i64) -> Option<&MapOutput> {
        match &self.output {
            Some((id, output)) if *id == stream_id && output.is(shuffle_id, map_id) => Some(output),
            _ => None,
        }
    }

    /// Keeps `output` for the next chunks of stream `stream_id` (replacing the one kept
    /// before), unless that stream has ended.
    pub fn keep_output(&mut self, stream_id: i64, output: MapOutput) {
        self.output = self
            .open
            .contains_key(&stream_id)
            .then_some((stream_id, output));
    }

    /// Drops the kept map output if its stream has ended (after its last chunk was handed
    /// out), so a connection left idle holds no data file open.
    pub fn release_ended_output(&mut self) {
        if let Some((id, _)) = &self.output
            && !self.open.contains_key(id)
        {
            self.output = None;
        }
    }

    fn close(&mut self, stream_id: i64) -> Option<Stream> {
        let stream = self.open.remove(&stream_id)?;
        let after = self.held.saturating_sub(stream.bytes);
        self.budget.give_back(charged(self.held) - charged(after));
        self.held = after;
        Some(stream)
    }

    /// Opens a stream; returns its id and chunk count. A stream of zero chunks is answered
    /// but not kept (nothing can be fetched from it).
    ///
    /// # Errors
    /// `TooManyStreams` at the limit, `StreamBudget` when the daemon-wide budget is spent.
    pub fn open(
        &mut self,
        ids: &StreamIds,
        executor: Arc<Executor>,
        chunks: Chunks,
    ) -> Result<(i64, usize), Error> {
        let total = chunks.count();
        if total > 0 && self.open.len() >= self.limit {
            return Err(Error::TooManyStreams { limit: self.limit });
        }
        let bytes = chunks.heap_bytes();
        if total > 0 {
            let after = self.held.saturating_add(bytes);
            let need = charged(after) - charged(self.held);
            if !self.budget.try_take(need) {
                return Err(Error::StreamBudget {
                    need,
                    used: self.budget.used(),
                    limit: self.budget.limit(),
                });
            }
            self.held = after;
        }
        let id = ids.next();
        if total > 0 {
            self.open.insert(
                id,
                Stream {
                    executor,
                    chunks,
                    next: 0,
                    total,
                    bytes,
                    served: 0,
                },
            );
        }
        Ok((id, total))
    }

    /// Hands out chunk `index` of stream `stream_id` (which must be the next one), dropping
    /// the stream after its last chunk.
    ///
    /// # Errors
    /// Unknown stream, out-of-order or out-of-range index.
    pub fn next_chunk(
        &mut self,
        stream_id: i64,
        index: i64,
    ) -> Result<(Arc<Executor>, ChunkPlan), Error> {
        let stream = self
            .open
            .get_mut(&stream_id)
            .ok_or(Error::UnknownStream { stream_id })?;
        if usize::try_from(index).ok() != Some(stream.next) {
            return Err(Error::OutOfOrder {
                got: index,
                expected: stream.next,
            });
        }
        let Some(plan) = stream.chunks.take(stream.next) else {
            let total = stream.total;
            self.close(stream_id);
            return Err(Error::BeyondEnd { total });
        };
        stream.next += 1;
        let executor = if stream.next >= stream.total {
            self.close(stream_id).map(|s| s.executor)
        } else {
            Some(Arc::clone(&stream.executor))
        };
        // The stream was found above; `remove` returns it.
        executor
            .map(|e| (e, plan))
            .ok_or(Error::UnknownStream { stream_id })
    }

    /// Counts `bytes` of body served from stream `stream_id` (nothing if it has ended).
    pub fn add_served(&mut self, stream_id: i64, bytes: u64) {
        if let Some(stream) = self.open.get_mut(&stream_id) {
            stream.served = stream.served.saturating_add(bytes);
        }
    }

    /// Body bytes served from stream `stream_id` so far, if it is open.
    pub fn served(&self, stream_id: i64) -> Option<u64> {
        self.open.get(&stream_id).map(|s| s.served)
    }

    /// Number of open streams.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// The connection closed: its streams give their bytes back.
impl Drop for Streams {
    fn drop(&mut self) {
        self.budget.give_back(charged(self.held));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Arc<Executor> {
        Arc::new(Executor {
            app_id: "a".into(),
            exec_id: "1".into(),
            local_dirs: vec![],
            resolved_dirs: vec![],
            sub_dirs_per_local_dir: 1,
            shuffle_manager: String::new(),
        })
    }

    fn shuffle(map_ids: Vec<i64>, reduce_ids: Vec<Vec<i32>>, batch: bool) -> Chunks {
        Chunks::Shuffle {
            shuffle_id: 7,
            map_ids,
            reduce_ids,
            batch,
            map_pos: 0,
            reduce_pos: 0,
        }
    }

    fn plan(map_id: i64, start: i32, end: i32) -> ChunkPlan {
        ChunkPlan::Shuffle {
            shuffle_id: 7,
            map_id,
            start,
            end,
        }
    }

    #[test]
    fn chunks_in_row_major_order_skipping_empty_maps() {
        let ids = StreamIds::new();
        let mut streams = Streams::new(10);
        let chunks = shuffle(vec![5, 6, 8], vec![vec![0, 1], vec![], vec![2]], false);
        let (id, total) = streams.open(&ids, exec(), chunks).unwrap();
        assert_eq!(total, 3);
        let got: Vec<_> = (0..3)
            .map(|i| streams.next_chunk(id, i).unwrap().1)
            .collect();
        assert_eq!(got, [plan(5, 0, 1), plan(5, 1, 2), plan(8, 2, 3)]);
        assert!(streams.is_empty(), "stream dropped after its last chunk");
        assert_eq!(
            streams.next_chunk(id, 3),
            Err(Error::UnknownStream { stream_id: id })
        );
    }

    #[test]
    fn batch_chunks_are_ranges() {
        let ids = StreamIds::new();
        let mut streams = Streams::new(10);
        let (id, total) = streams
            .open(
                &ids,
                exec(),
                shuffle(vec![5, 6], vec![vec![0, 3], vec![2, 4]], true),
            )
            .unwrap();
        assert_eq!(total, 2);
        assert_eq!(streams.next_chunk(id, 0).unwrap().1, plan(5, 0, 3));
        assert_eq!(streams.next_chunk(id, 1).unwrap().1, plan(6, 2, 4));
    }

    #[test]
    fn order_limits_and_ids() {
        let ids = StreamIds::new();
        let mut streams = Streams::new(2);
        let blocks = || {
            Chunks::Blocks(vec![
                ChunkPlan::Rdd {
                    rdd_id: 1,
                    split_index: 2
                };
                3
            ])
        };
        let (a, _) = streams.open(&ids, exec(), blocks()).unwrap();
        let (b, _) = streams.open(&ids, exec(), blocks()).unwrap();
        assert!(a >= 0 && b > a);
        assert_eq!(
            streams.open(&ids, exec(), blocks()).unwrap_err(),
            Error::TooManyStreams { limit: 2 }
        );
        assert_eq!(
            streams.next_chunk(a, 1).unwrap_err(),
            Error::OutOfOrder {
                got: 1,
                expected: 0
            }
        );
        assert_eq!(
            streams.next_chunk(a, -1).unwrap_err(),
            Error::OutOfOrder {
                got: -1,
                expected: 0
            }
        );
        streams.next_chunk(a, 0).unwrap();
        assert_eq!(
            streams.next_chunk(a, 0).unwrap_err(),
            Error::OutOfOrder {
                got: 0,
                expected: 1
            }
        );
        // Zero-chunk streams are answered but not kept.
        let (_, total) = streams.open(&ids, exec(), Chunks::Blocks(vec![])).unwrap();
        assert_eq!((total, streams.len()), (0, 2));
    }

    #[test]
    fn stream_bytes_come_from_the_shared_budget_and_go_back() {
        let ids = StreamIds::new();
        // Each stream is exactly the allowance: the first one per connection is free.
        let reduce: Vec<Vec<i32>> = vec![(0..(STREAM_ALLOWANCE_BYTES as i32 - 32) / 4).collect()];
        let one = shuffle(vec![1], reduce.clone(), false).heap_bytes();
        assert_eq!(one, STREAM_ALLOWANCE_BYTES);
        let budget = Arc::new(ByteBudget::new(one));
        let mut a = Streams::with_budget(100, Arc::clone(&budget));
        let mut b = Streams::with_budget(100, Arc::clone(&budget));
        let (sa, _) = a
            .open(&ids, exec(), shuffle(vec![1], reduce.clone(), false))
            .unwrap();
        b.open(&ids, exec(), shuffle(vec![1], reduce.clone(), false))
            .unwrap();
        assert_eq!(budget.used(), 0, "within each connection's allowance");
        b.open(&ids, exec(), shuffle(vec![1], reduce.clone(), false))
            .unwrap();
        assert_eq!(budget.used(), one);
        let refused = a.open(&ids, exec(), shuffle(vec![1], reduce.clone(), false));
        assert!(
            matches!(refused, Err(Error::StreamBudget { .. })),
            "{refused:?}"
        );
        // Reading a stream to its end gives its bytes back.
        let chunks = reduce[0].len() as i64;
        for i in 0..chunks {
            a.next_chunk(sa, i).unwrap();
        }
        assert_eq!(a.len(), 0);
        // A closed connection gives back everything it held.
        drop(b);
        assert_eq!(budget.used(), 0);
        a.open(&ids, exec(), shuffle(vec![1], reduce.clone(), false))
            .unwrap();
        a.open(&ids, exec(), shuffle(vec![1], reduce.clone(), false))
            .unwrap();
        assert_eq!(budget.used(), one);
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn without_a_budget_only_the_count_limits() {
        let ids = StreamIds::new();
        let reduce: Vec<Vec<i32>> = vec![(0..100_000).collect()];
        let mut s = Streams::new(5);
        for _ in 0..5 {
            s.open(&ids, exec(), shuffle(vec![1], reduce.clone(), false))
                .unwrap();
        }
        assert!(matches!(
            s.open(&ids, exec(), shuffle(vec![1], reduce.clone(), false)),
            Err(Error::TooManyStreams { limit: 5 })
        ));
    }
}
