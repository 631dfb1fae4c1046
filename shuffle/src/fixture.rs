//! Writing files in Spark's on-disk format, for tests, benchmarks and tooling: a
//! `blockmgr-*` dir with hashed sub-dirs, shuffle index/data/checksum files and RDD block
//! files, laid out exactly where a Spark executor would put them.

use std::io;
use std::path::{Path, PathBuf};

use crate::store::layout::{self, BlockFile, ChecksumAlgorithm};

/// An executor's local dirs, as Spark would create them.
#[derive(Debug, Clone)]
pub struct ExecutorDirs {
    /// The `blockmgr-*` dirs (absolute).
    pub dirs: Vec<PathBuf>,
    /// Sub-dirs per local dir.
    pub sub_dirs: u32,
}

impl ExecutorDirs {
    /// Creates `count` dirs `blockmgr-<tag>-<i>` under `root`.
    ///
    /// # Errors
    /// When a directory cannot be created.
    pub fn create(root: &Path, tag: &str, count: usize, sub_dirs: u32) -> io::Result<Self> {
        let dirs = (0..count)
            .map(|i| {
                let dir = root.join(format!("blockmgr-{tag}-{i}"));
                std::fs::create_dir_all(&dir)?;
                Ok(dir)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self { dirs, sub_dirs })
    }

    /// The dirs as strings, as `RegisterExecutor` sends them.
    pub fn as_strings(&self) -> Vec<String> {
        self.dirs.iter().map(|d| d.display().to_string()).collect()
    }

    /// Where file `file` of this executor lives (sub-dir created).
    ///
    /// # Errors
    /// When the sub-dir cannot be created.
    pub fn path(&self, file: &BlockFile) -> io::Result<PathBuf> {
        let name = file.name();
        let path = layout::locate(&self.dirs, self.sub_dirs, &name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no dirs"))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(path)
    }

    /// Writes one map output: the partitions' bytes concatenated in the data file, the
    /// cumulative offsets in the index file and an ADLER32 checksum file, as Spark's sort
    /// shuffle writer does.
    ///
    /// # Errors
    /// On any write failure.
    pub fn write_map_output(
        &self,
        shuffle_id: i32,
        map_id: i64,
        partitions: &[&[u8]],
    ) -> io::Result<()> {
        let mut data = Vec::new();
        let mut index = Vec::with_capacity((partitions.len() + 1) * 8);
        let mut sums = Vec::with_capacity(partitions.len() * 8);
        index.extend_from_slice(&0i64.to_be_bytes());
        for part in partitions {
            data.extend_from_slice(part);
            index.extend_from_slice(&(data.len() as i64).to_be_bytes());
            let mut sum = crate::store::checksum::Checksum::new(ChecksumAlgorithm::Adler32);
            sum.update(part);
            sums.extend_from_slice(&sum.value().to_be_bytes());
        }
        std::fs::write(
            self.path(&BlockFile::ShuffleData { shuffle_id, map_id })?,
            data,
        )?;
        std::fs::write(
            self.path(&BlockFile::ShuffleChecksum {
                shuffle_id,
                map_id,
                algorithm: ChecksumAlgorithm::Adler32,
            })?,
            sums,
        )?;
        std::fs::write(
            self.path(&BlockFile::ShuffleIndex { shuffle_id, map_id })?,
            index,
        )
    }

    /// Writes RDD block `rdd_<rdd_id>_<split_index>`.
    ///
    /// # Errors
    /// On any write failure.
    pub fn write_rdd_block(&self, rdd_id: i32, split_index: i32, bytes: &[u8]) -> io::Result<()> {
        std::fs::write(
            self.path(&BlockFile::Rdd {
                rdd_id,
                split_index,
            })?,
            bytes,
        )
    }
}

/// Deterministic pseudo-random bytes (xorshift), so tests can regenerate expected content.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
