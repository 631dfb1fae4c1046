//! Spark-format shuffle files for benchmarks: `maps × reducers` blocks of one shuffle of one
//! synthetic executor, written where a Spark executor would put them, with content the load
//! generator can verify byte for byte without keeping a copy.
//!
//! Content: every block is a window of one fixed pseudo-random pattern of [`PATTERN_LEN`]
//! bytes (a prime length), starting at a rotation derived from `(map, reduce)`, with the first
//! [`STAMP_LEN`] bytes replaced by a stamp naming the block (map id, reduce id, shuffle id).
//! Verifying a block is a few `memcmp`s against the pattern, so the client spends little
//! CPU on it, and a block served in place of another is caught by its stamp and rotation.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use kshuffle::fixture::ExecutorDirs;
use kshuffle::store::BlockFile;

/// Length of the repeating content pattern (a prime, so rotations rarely coincide).
pub const PATTERN_LEN: usize = 65_521;
/// Bytes at the start of each block that name it.
pub const STAMP_LEN: usize = 16;
/// First map task attempt id; map `m` has id `MAP_ID_BASE + m` (like Spark's attempt ids).
pub const MAP_ID_BASE: i64 = 1_000;

/// The shape of a layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayoutSpec {
    /// Map outputs (data + index file pairs).
    pub maps: u32,
    /// Reduce partitions per map output.
    pub reducers: u32,
    /// Typical block size.
    pub block_bytes: u64,
    /// Size skew: block sizes spread log-uniformly over `[b / (1 + skew), b * (1 + skew)]`;
    /// 0 makes every block exactly `block_bytes`.
    pub skew: f64,
    /// Shuffle id of the files.
    pub shuffle_id: i32,
}

impl LayoutSpec {
    /// Total bytes of all blocks.
    pub fn total_bytes(&self) -> u64 {
        (0..self.maps)
            .flat_map(|m| (0..self.reducers).map(move |r| (m, r)))
            .map(|(m, r)| self.block_len(m, r))
            .sum()
    }

    /// Size of block `(map index, reduce)`.
    pub fn block_len(&self, map: u32, reduce: u32) -> u64 {
        if self.skew <= 0.0 {
            return self.block_bytes;
        }
        let u = (mix(u64::from(map) << 32 | u64::from(reduce)) >> 11) as f64 / (1u64 << 53) as f64;
        let spread = (1.0 + self.skew).ln();
        let factor = ((2.0 * u - 1.0) * spread).exp();
        ((self.block_bytes as f64 * factor) as u64).max(1)
    }
}

/// A written layout.
#[derive(Debug)]
pub struct Layout {
    /// Its shape.
    pub spec: LayoutSpec,
    /// The executor's `blockmgr-*` dirs.
    pub dirs: ExecutorDirs,
    /// `offsets[m]` = the cumulative offsets of map `m`'s data file (`reducers + 1` entries).
    offsets: Vec<Vec<u64>>,
    pattern: Pattern,
}

impl Layout {
    /// Writes the files of `spec` under `root` in `dirs` local dirs named after `tag`.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn create(
        root: &Path,
        tag: &str,
        local_dirs: usize,
        spec: LayoutSpec,
    ) -> anyhow::Result<Self> {
        let dirs = ExecutorDirs::create(root, tag, local_dirs, 64)
            .with_context(|| format!("creating executor dirs under {}", root.display()))?;
        let pattern = Pattern::new();
        let mut offsets = Vec::with_capacity(spec.maps as usize);
        let mut buf = Vec::new();
        for m in 0..spec.maps {
            let map_id = map_id(m);
            let data_path = dirs.path(&BlockFile::ShuffleData {
                shuffle_id: spec.shuffle_id,
                map_id,
            })?;
            let mut data =
                io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&data_path)?);
            let mut offs = Vec::with_capacity(spec.reducers as usize + 1);
            let mut at = 0u64;
            offs.push(0);
            for r in 0..spec.reducers {
                let len = spec.block_len(m, r);
                buf.clear();
                pattern.fill(&block_key(spec.shuffle_id, map_id, r), len, &mut buf);
                data.write_all(&buf)?;
                at += len;
                offs.push(at);
            }
            data.flush()?;
            let index: Vec<u8> = offs.iter().flat_map(|o| o.to_be_bytes()).collect();
            let index_path = dirs.path(&BlockFile::ShuffleIndex {
                shuffle_id: spec.shuffle_id,
                map_id,
            })?;
            std::fs::write(&index_path, index)
                .with_context(|| format!("writing {}", index_path.display()))?;
            offsets.push(offs);
        }
        Ok(Self {
            spec,
            dirs,
            offsets,
            pattern,
        })
    }

    /// The local dirs as `RegisterExecutor` sends them.
    pub fn local_dirs(&self) -> Vec<String> {
        self.dirs.as_strings()
    }

    /// Paths of the data files, in map order.
    pub fn data_files(&self) -> anyhow::Result<Vec<PathBuf>> {
        (0..self.spec.maps)
            .map(|m| {
                Ok(self.dirs.path(&BlockFile::ShuffleData {
                    shuffle_id: self.spec.shuffle_id,
                    map_id: map_id(m),
                })?)
            })
            .collect()
    }

    /// The byte length of partitions `start..end` of map `m`.
    pub fn range_len(&self, m: u32, start: u32, end: u32) -> u64 {
        let offs = &self.offsets[m as usize];
        offs[end as usize] - offs[start as usize]
    }

    /// A verifier for partitions `start..end` of map `m` as one contiguous range.
    pub fn verifier(&self, m: u32, start: u32, end: u32) -> RangeVerifier {
        RangeVerifier {
            map: m,
            reduce: start,
            end,
            pos_in_block: 0,
            remaining: self.range_len(m, start, end),
        }
    }
}

/// The map task attempt id of map index `m`.
pub fn map_id(m: u32) -> i64 {
    MAP_ID_BASE + i64::from(m)
}

/// The stamp of a block.
fn block_key(shuffle_id: i32, map_id: i64, reduce: u32) -> [u8; STAMP_LEN] {
    let mut key = [0u8; STAMP_LEN];
    key[..8].copy_from_slice(&map_id.to_be_bytes());
    key[8..12].copy_from_slice(&reduce.to_be_bytes());
    key[12..].copy_from_slice(&shuffle_id.to_be_bytes());
    key
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finalizer.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The repeating pattern, stored twice so any window of up to `PATTERN_LEN` bytes is
/// contiguous.
#[derive(Debug)]
struct Pattern(Vec<u8>);

impl Pattern {
    fn new() -> Self {
        let once = kshuffle::fixture::pseudo_random_bytes(0x5eed, PATTERN_LEN);
        let mut twice = once.clone();
        twice.extend_from_slice(&once);
        Self(twice)
    }

    fn rotation(key: &[u8; STAMP_LEN]) -> usize {
        let (a, b) = key.split_at(8);
        let a = u64::from_be_bytes(a.try_into().unwrap_or_default());
        let b = u64::from_be_bytes(b.try_into().unwrap_or_default());
        (mix(a ^ mix(b)) % PATTERN_LEN as u64) as usize
    }

    /// Appends the `len` bytes of the block named `key` to `out`.
    fn fill(&self, key: &[u8; STAMP_LEN], len: u64, out: &mut Vec<u8>) {
        let rot = Self::rotation(key);
        let len = len as usize;
        let start = out.len();
        let mut pos = 0;
        while pos < len {
            let p = (rot + pos) % PATTERN_LEN;
            let n = (len - pos).min(PATTERN_LEN);
            out.extend_from_slice(&self.0[p..p + n]);
            pos += n;
        }
        let stamp = len.min(STAMP_LEN);
        out[start..start + stamp].copy_from_slice(&key[..stamp]);
    }

    /// Whether `data` equals bytes `pos..pos + data.len()` of the block named `key`.
    fn matches(&self, key: &[u8; STAMP_LEN], pos: u64, data: &[u8]) -> bool {
        let rot = Self::rotation(key);
        let mut pos = pos as usize;
        let mut data = data;
        while pos < STAMP_LEN {
            let Some((first, rest)) = data.split_first() else {
                return true;
            };
            if *first != key[pos] {
                return false;
            }
            data = rest;
            pos += 1;
        }
        while !data.is_empty() {
            let p = (rot + pos) % PATTERN_LEN;
            let n = data.len().min(PATTERN_LEN);
            let (head, rest) = data.split_at(n);
            if head != &self.0[p..p + n] {
                return false;
            }
            data = rest;
            pos += n;
        }
        true
    }
}

/// Checks the bytes of a contiguous range of blocks as they arrive, in pieces.
#[derive(Debug)]
pub struct RangeVerifier {
    map: u32,
    reduce: u32,
    end: u32,
    pos_in_block: u64,
    remaining: u64,
}

impl RangeVerifier {
    /// Checks the next piece of the range (of `layout`, which made this verifier); `false`
    /// on the first mismatch or excess byte.
    pub fn feed(&mut self, layout: &Layout, mut data: &[u8]) -> bool {
        let spec = &layout.spec;
        while !data.is_empty() {
            if self.reduce >= self.end {
                return false;
            }
            let len = spec.block_len(self.map, self.reduce);
            if self.pos_in_block == len {
                self.reduce += 1;
                self.pos_in_block = 0;
                continue;
            }
            let left = (len - self.pos_in_block) as usize;
            let n = left.min(data.len());
            let (head, rest) = data.split_at(n);
            let key = block_key(spec.shuffle_id, map_id(self.map), self.reduce);
            if !layout.pattern.matches(&key, self.pos_in_block, head) {
                return false;
            }
            data = rest;
            self.pos_in_block += n as u64;
            self.remaining -= n as u64;
        }
        true
    }

    /// Whether every byte of the range has been fed.
    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_match_the_verifier_and_a_wrong_block_does_not() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let spec = LayoutSpec {
            maps: 3,
            reducers: 5,
            block_bytes: 70_000,
            skew: 1.0,
            shuffle_id: 2,
        };
        let layout = Layout::create(tmp.path(), "t", 2, spec)?;
        for (m, path) in layout.data_files()?.iter().enumerate() {
            let bytes = std::fs::read(path)?;
            let m = m as u32;
            assert_eq!(bytes.len() as u64, layout.range_len(m, 0, 5));
            let mut v = layout.verifier(m, 0, 5);
            for piece in bytes.chunks(4096) {
                assert!(v.feed(&layout, piece));
            }
            assert!(v.is_complete());
            // Partition 1 alone, then served as partition 2: caught.
            let one = layout.offsets[m as usize][1] as usize;
            let two = layout.offsets[m as usize][2] as usize;
            assert!(layout.verifier(m, 1, 2).feed(&layout, &bytes[one..two]));
            assert!(!layout.verifier(m, 2, 3).feed(&layout, &bytes[one..two]));
        }
        Ok(())
    }
}
