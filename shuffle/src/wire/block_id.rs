//! Block ids as they appear in messages (§3.3, §4.2): `shuffle_S_M_R`,
//! `shuffle_S_M_START_END` (batch, end exclusive), `rdd_R_P` and `shuffleChunk_S_MERGE_R_C`.
//!
//! Parsing is strict so that [`BlockId`]'s `Display` is its exact inverse: every number is
//! plain ASCII decimal (no sign, no leading zero, not empty), fits its type, and every kind has
//! an exact number of parts. Ids that are file names (`RemoveBlocks`) are not parsed here.

use std::fmt;
use std::str::FromStr;

use super::Error;

/// A parsed block id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockId {
    /// `shuffle_S_M_R`: reduce partition `R` of map output `M` (the map task attempt id).
    Shuffle {
        /// Shuffle id.
        shuffle_id: i32,
        /// Map task attempt id.
        map_id: i64,
        /// Reduce partition.
        reduce_id: i32,
    },
    /// `shuffle_S_M_START_END`: partitions `START..END` (end exclusive, `START < END`) of one
    /// map output, served as one contiguous range.
    ShuffleBatch {
        /// Shuffle id.
        shuffle_id: i32,
        /// Map task attempt id.
        map_id: i64,
        /// First reduce partition.
        start_reduce_id: i32,
        /// One past the last reduce partition.
        end_reduce_id: i32,
    },
    /// `rdd_R_P`: a cached RDD partition stored on disk.
    Rdd {
        /// RDD id.
        rdd_id: i32,
        /// Partition index.
        split_index: i32,
    },
    /// `shuffleChunk_S_MERGE_R_C`: a chunk of a push-merged block (push-based shuffle only).
    ShuffleChunk {
        /// Shuffle id.
        shuffle_id: i32,
        /// Merge id of the shuffle.
        shuffle_merge_id: i32,
        /// Reduce partition.
        reduce_id: i32,
        /// Chunk of the merged block.
        chunk_id: i32,
    },
}

// === impl BlockId ===

impl BlockId {
    /// Parses a block id sent by a client.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBlockId`] (carrying the id truncated to 128 bytes) if the kind is
    /// unknown, the number of parts is wrong, a number is not plain non-negative decimal or
    /// overflows, or a batch range is empty.
    pub fn parse(s: &str) -> Result<BlockId, Error> {
        let err = |reason| Error::invalid_block_id(s, reason);
        // At most 6 pieces: one more than the longest form, to detect extra parts.
        let mut parts = [""; 6];
        let mut count = 0;
        for (slot, part) in parts.iter_mut().zip(s.splitn(6, '_')) {
            *slot = part;
            count += 1;
        }
        let parts = parts.get(..count).unwrap_or_default();
        let num_i32 = |p: &str| parse_decimal::<i32>(p).map_err(err);
        let num_i64 = |p: &str| parse_decimal::<i64>(p).map_err(err);
        match parts {
            ["shuffle", s, m, r] => Ok(BlockId::Shuffle {
                shuffle_id: num_i32(s)?,
                map_id: num_i64(m)?,
                reduce_id: num_i32(r)?,
            }),
            ["shuffle", s, m, start, end] => {
                let (start_reduce_id, end_reduce_id) = (num_i32(start)?, num_i32(end)?);
                if start_reduce_id >= end_reduce_id {
                    return Err(err("batch range must have start < end"));
                }
                Ok(BlockId::ShuffleBatch {
                    shuffle_id: num_i32(s)?,
                    map_id: num_i64(m)?,
                    start_reduce_id,
                    end_reduce_id,
                })
            }
            ["rdd", r, p] => Ok(BlockId::Rdd {
                rdd_id: num_i32(r)?,
                split_index: num_i32(p)?,
            }),
            ["shuffleChunk", s, merge, r, c] => Ok(BlockId::ShuffleChunk {
                shuffle_id: num_i32(s)?,
                shuffle_merge_id: num_i32(merge)?,
                reduce_id: num_i32(r)?,
                chunk_id: num_i32(c)?,
            }),
            ["shuffle" | "rdd" | "shuffleChunk", ..] => Err(err("wrong number of parts")),
            _ => Err(err("unknown block id kind")),
        }
    }
}

/// The wire form; the exact inverse of [`BlockId::parse`] for ids it returned.
impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockId::Shuffle {
                shuffle_id,
                map_id,
                reduce_id,
            } => {
                write!(f, "shuffle_{shuffle_id}_{map_id}_{reduce_id}")
            }
            BlockId::ShuffleBatch {
                shuffle_id,
                map_id,
                start_reduce_id,
                end_reduce_id,
            } => {
                write!(
                    f,
                    "shuffle_{shuffle_id}_{map_id}_{start_reduce_id}_{end_reduce_id}"
                )
            }
            BlockId::Rdd {
                rdd_id,
                split_index,
            } => write!(f, "rdd_{rdd_id}_{split_index}"),
            BlockId::ShuffleChunk {
                shuffle_id,
                shuffle_merge_id,
                reduce_id,
                chunk_id,
            } => {
                write!(
                    f,
                    "shuffleChunk_{shuffle_id}_{shuffle_merge_id}_{reduce_id}_{chunk_id}"
                )
            }
        }
    }
}

/// Parses a non-negative decimal number: ASCII digits only, no sign, no leading zero (except
/// `"0"`), not empty, and within `T`'s range. The error is a short reason.
pub(crate) fn parse_decimal<T: FromStr>(s: &str) -> Result<T, &'static str> {
    if s.is_empty() {
        return Err("empty number");
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("number is not plain decimal digits");
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err("number has a leading zero");
    }
    s.parse().map_err(|_| "number out of range")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reason(s: &str) -> &'static str {
        match BlockId::parse(s) {
            Err(Error::InvalidBlockId { reason, .. }) => reason,
            other => panic!("{s:?} parsed to {other:?}"),
        }
    }

    #[test]
    fn parses_every_kind_and_displays_back() {
        let cases = [
            (
                "shuffle_0_5_2",
                BlockId::Shuffle {
                    shuffle_id: 0,
                    map_id: 5,
                    reduce_id: 2,
                },
            ),
            (
                "shuffle_12_123456789012_0",
                BlockId::Shuffle {
                    shuffle_id: 12,
                    map_id: 123_456_789_012,
                    reduce_id: 0,
                },
            ),
            (
                "shuffle_2147483647_9223372036854775807_2147483647",
                BlockId::Shuffle {
                    shuffle_id: i32::MAX,
                    map_id: i64::MAX,
                    reduce_id: i32::MAX,
                },
            ),
            (
                "shuffle_1_7_0_3",
                BlockId::ShuffleBatch {
                    shuffle_id: 1,
                    map_id: 7,
                    start_reduce_id: 0,
                    end_reduce_id: 3,
                },
            ),
            (
                "rdd_3_4",
                BlockId::Rdd {
                    rdd_id: 3,
                    split_index: 4,
                },
            ),
            (
                "shuffleChunk_1_2_3_4",
                BlockId::ShuffleChunk {
                    shuffle_id: 1,
                    shuffle_merge_id: 2,
                    reduce_id: 3,
                    chunk_id: 4,
                },
            ),
        ];
        for (s, id) in cases {
            assert_eq!(BlockId::parse(s).unwrap(), id, "{s}");
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed_ids() {
        for s in [
            "shuffle_1_2",
            "shuffle_-1_2_3",
            "shuffle_1_2_3_4_5",
            "shuffle_1_2_3_4_5_6_7",
            "rdd_1",
            "rdd_1_2_3",
            "shuffle_1_2_3 ",
            " shuffle_1_2_3",
            "shuffle_01x_2_3",
            "shuffle_01_2_3",
            "shuffle_+1_2_3",
            "shuffle__2_3",
            "shuffle_1_2_",
            "shuffle_2147483648_2_3",
            "shuffle_1_9223372036854775808_3",
            "rdd_1_99999999999",
            "shuffle_1_2_3_3",
            "shuffle_1_2_4_3",
            "shuffleChunk_1_2_3",
            "shufflePush_0_0_3_2",
            "Shuffle_1_2_3",
            "shuffle_1_2_3.index",
            "shuffle_١_2_3",
            "",
            "_",
        ] {
            assert!(BlockId::parse(s).is_err(), "{s:?} should be refused");
        }
        assert_eq!(reason("shuffle_1_2"), "wrong number of parts");
        assert_eq!(reason("shuffle_1_2_3_4_5"), "wrong number of parts");
        assert_eq!(
            reason("shuffle_-1_2_3"),
            "number is not plain decimal digits"
        );
        assert_eq!(reason("shuffle_1_2_2147483648"), "number out of range");
        assert_eq!(
            reason("shuffle_1_2_3_3"),
            "batch range must have start < end"
        );
        assert_eq!(reason("broadcast_1"), "unknown block id kind");
    }

    #[test]
    fn error_keeps_a_bounded_id() {
        let long = format!("shuffle_1_2_{}", "9".repeat(10_000));
        let Err(Error::InvalidBlockId { id, .. }) = BlockId::parse(&long) else {
            panic!("accepted")
        };
        assert!(id.len() <= 131);
        assert!(id.starts_with("shuffle_1_2_999"));
    }

    #[test]
    fn parse_decimal_rules() {
        assert_eq!(parse_decimal::<i32>("0"), Ok(0));
        assert_eq!(parse_decimal::<i64>("42"), Ok(42));
        assert!(parse_decimal::<i32>("00").is_err());
        assert!(parse_decimal::<i32>("-0").is_err());
        assert!(parse_decimal::<i32>("").is_err());
    }
}
