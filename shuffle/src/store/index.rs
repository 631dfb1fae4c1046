//! A bounded cache of parsed shuffle index files.
//!
//! An index file is `(partitions + 1)` big-endian `i64` cumulative offsets into the data file.
//! Index files are small and read on every chunk, so their parsed offsets are cached, bounded
//! by total bytes (like Spark's `spark.shuffle.service.index.cache.size`, 100 MiB).
//!
//! Why not keep them `mmap`ed: the files belong to tenants. A client that truncates its own
//! mapped index file would make the daemon's next access raise `SIGBUS` and kill the process
//! for every application on the node. A `read` of a few KiB costs the same and cannot fault.
//!
//! Staleness: each entry remembers the identity (device, inode, size, mtime) of the data file
//! it was read beside. The caller opens the data file for every chunk anyway; when its
//! identity differs (the map output was rewritten: the old fetch protocol reuses file names
//! on a stage retry), the index is read again. Removal of files through the daemon
//! invalidates entries explicitly.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use super::Error;
use super::fsio;

/// Largest index file the daemon reads: 8 Mi partitions. Spark jobs stay far below.
pub const MAX_INDEX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// What identifies one version of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_nanos: i128,
}

impl FileIdentity {
    /// The identity of an open file.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_nanos: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// Parsed offsets of one index file.
#[derive(Debug)]
pub struct Index {
    offsets: Box<[u64]>,
    data: Option<FileIdentity>,
}

impl Index {
    /// Number of reduce partitions the index describes.
    pub fn partitions(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// The byte range `[offset, offset + len)` of partitions `start..end` in the data file.
    /// `None` when the range is out of bounds or empty-ordered (`start >= end`).
    pub fn range(&self, start: usize, end: usize) -> Option<(u64, u64)> {
        if start >= end {
            return None;
        }
        let from = *self.offsets.get(start)?;
        let to = *self.offsets.get(end)?;
        // Offsets are validated monotonic at parse time.
        Some((from, to - from))
    }

    /// The offset just past the last partition: the size the data file must have at least.
    pub fn data_len(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// Parses and validates index bytes: a whole number of `i64`s, at least two, first 0,
    /// non-decreasing.
    pub fn parse(bytes: &[u8]) -> Result<Box<[u64]>, &'static str> {
        if !bytes.len().is_multiple_of(8) {
            return Err("length is not a multiple of 8");
        }
        if bytes.len() < 16 {
            return Err("fewer than two offsets");
        }
        let mut offsets = Vec::with_capacity(bytes.len() / 8);
        let mut prev = 0u64;
        for chunk in bytes.chunks_exact(8) {
            let mut be = [0u8; 8];
            be.copy_from_slice(chunk);
            let v = i64::from_be_bytes(be);
            let v = u64::try_from(v).map_err(|_| "negative offset")?;
            if v < prev {
                return Err("offsets decrease");
            }
            prev = v;
            offsets.push(v);
        }
        if offsets.first() != Some(&0) {
            return Err("first offset is not 0");
        }
        Ok(offsets.into_boxed_slice())
    }

    fn weight(&self) -> usize {
        self.offsets.len() * 8 + 64
    }
}

/// The cache. Cheap to share; all methods take `&self`.
///
/// Keys are hashed with foldhash (randomly seeded per process) rather than the standard
/// SipHash: the lookup runs for every map output a chunk is served from, and SipHash over
/// the path was ~1,200 instructions of it (`scripts/profile.sh callgrind small`).
#[derive(Debug)]
pub struct IndexCache {
    entries: DashMap<PathBuf, Arc<Index>, foldhash::fast::RandomState>,
    bytes: AtomicUsize,
    capacity_bytes: usize,
}

impl IndexCache {
    /// A cache holding at most about `capacity_bytes` of offsets.
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            entries: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            bytes: AtomicUsize::new(0),
            capacity_bytes,
        }
    }

    /// The index at `path`, valid for the data file whose identity is `data` (or for a
    /// missing data file when `None`). Reads the file on a miss or when stale.
    ///
    /// `open` opens the file (see [`super::OpenFiles::open_uncached`]).
    ///
    /// # Errors
    /// `IndexMissing`, `IndexUnreadable` or `IndexCorrupt`.
    pub fn get(
        &self,
        path: &Path,
        data: Option<FileIdentity>,
        open: impl FnOnce(&Path) -> std::io::Result<File>,
    ) -> Result<Arc<Index>, Error> {
        if let Some(hit) = self.entries.get(path)
            && hit.data == data
        {
            return Ok(Arc::clone(&hit));
        }
        let index = Arc::new(Index {
            offsets: read_index(path, open)?,
            data,
        });
        if let Some(old) = self.entries.insert(path.to_path_buf(), Arc::clone(&index)) {
            self.bytes.fetch_sub(old.weight(), Ordering::Relaxed);
        }
        let total = self.bytes.fetch_add(index.weight(), Ordering::Relaxed) + index.weight();
        if total > self.capacity_bytes {
            self.shrink(path);
        }
        Ok(index)
    }

    /// Forgets the entry of `path` (the file was removed).
    pub fn invalidate(&self, path: &Path) {
        if let Some((_, old)) = self.entries.remove(path) {
            self.bytes.fetch_sub(old.weight(), Ordering::Relaxed);
        }
    }

    /// Forgets every entry under `dir`.
    pub fn invalidate_under(&self, dir: &Path) {
        let doomed: Vec<PathBuf> = self
            .entries
            .iter()
            .filter(|e| e.key().starts_with(dir))
            .map(|e| e.key().clone())
            .collect();
        for path in doomed {
            self.invalidate(&path);
        }
    }

    /// Number of cached index files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Evicts entries (not `keep`) until the cache is at most 3/4 full. Eviction order is the
    /// map's iteration order: cheap and good enough, since a miss costs one small read.
    fn shrink(&self, keep: &Path) {
        let target = self.capacity_bytes / 4 * 3;
        let mut excess = self.bytes.load(Ordering::Relaxed).saturating_sub(target);
        let mut doomed = Vec::new();
        for entry in self.entries.iter() {
            if excess == 0 {
                break;
            }
            if entry.key() != keep {
                excess = excess.saturating_sub(entry.value().weight());
                doomed.push(entry.key().clone());
            }
        }
        for path in doomed {
            self.invalidate(&path);
        }
    }
}

fn read_index(
    path: &Path,
    open: impl FnOnce(&Path) -> std::io::Result<File>,
) -> Result<Box<[u64]>, Error> {
    let file = open(path).map_err(|source| {
        if fsio::is_not_found(&source) {
            Error::IndexMissing {
                path: path.to_path_buf(),
            }
        } else {
            Error::IndexUnreadable {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let unreadable = |source| Error::IndexUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(unreadable)?.len();
    if len > MAX_INDEX_FILE_BYTES {
        return Err(Error::IndexCorrupt {
            path: path.to_path_buf(),
            reason: "larger than 64 MiB",
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_INDEX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    Index::parse(&bytes).map_err(|reason| Error::IndexCorrupt {
        path: path.to_path_buf(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_bytes(offsets: &[i64]) -> Vec<u8> {
        offsets.iter().flat_map(|o| o.to_be_bytes()).collect()
    }

    #[test]
    fn parse_validates() {
        assert_eq!(
            &*Index::parse(&index_bytes(&[0, 5, 5, 9])).unwrap(),
            &[0, 5, 5, 9]
        );
        assert!(Index::parse(&index_bytes(&[0])).is_err());
        assert!(Index::parse(&index_bytes(&[1, 5])).is_err());
        assert!(Index::parse(&index_bytes(&[0, 5, 4])).is_err());
        assert!(Index::parse(&index_bytes(&[0, -1])).is_err());
        assert!(Index::parse(&[0u8; 17]).is_err());
        assert!(Index::parse(&[]).is_err());
    }

    #[test]
    fn ranges() {
        let idx = Index {
            offsets: vec![0, 5, 5, 9].into(),
            data: None,
        };
        assert_eq!(idx.partitions(), 3);
        assert_eq!(idx.range(0, 1), Some((0, 5)));
        assert_eq!(idx.range(1, 2), Some((5, 0)));
        assert_eq!(idx.range(0, 3), Some((0, 9)));
        assert_eq!(idx.range(2, 4), None);
        assert_eq!(idx.range(2, 2), None);
        assert_eq!(idx.data_len(), 9);
    }

    #[test]
    fn cache_hits_reloads_when_stale_and_stays_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let cache = IndexCache::new(10 * 1024);
        let p = root.join("a.index");
        std::fs::write(&p, index_bytes(&[0, 3])).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        let id1 = Some(FileIdentity::of(&meta));
        assert_eq!(
            cache
                .get(&p, id1, fsio::open_no_symlinks)
                .unwrap()
                .data_len(),
            3
        );
        // Rewritten on disk: same identity = cached value; new identity = re-read.
        std::fs::write(&p, index_bytes(&[0, 7])).unwrap();
        assert_eq!(
            cache
                .get(&p, id1, fsio::open_no_symlinks)
                .unwrap()
                .data_len(),
            3
        );
        assert_eq!(
            cache
                .get(&p, None, fsio::open_no_symlinks)
                .unwrap()
                .data_len(),
            7
        );
        cache.invalidate(&p);
        assert!(cache.is_empty());

        for i in 0..200 {
            let p = root.join(format!("{i}.index"));
            std::fs::write(&p, index_bytes(&[0, i])).unwrap();
            assert_eq!(
                cache
                    .get(&p, None, fsio::open_no_symlinks)
                    .unwrap()
                    .data_len(),
                i as u64
            );
        }
        assert!(
            cache.bytes.load(Ordering::Relaxed) <= 10 * 1024,
            "cache over its bound"
        );
        assert!(!cache.is_empty());
        cache.invalidate_under(&root);
        assert!(cache.is_empty());
        assert_eq!(cache.bytes.load(Ordering::Relaxed), 0);

        assert!(matches!(
            cache.get(&root.join("none"), None, fsio::open_no_symlinks),
            Err(Error::IndexMissing { .. })
        ));
        std::fs::write(root.join("bad"), [1, 2, 3]).unwrap();
        assert!(matches!(
            cache.get(&root.join("bad"), None, fsio::open_no_symlinks),
            Err(Error::IndexCorrupt { .. })
        ));
    }
}
