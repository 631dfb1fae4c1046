//! Shuffle data files kept open between requests.
//!
//! A reducer's fetch names one block of each of many map outputs, and the next reducer names
//! the next block of the same files: opening each data file per block (`openat2` with its
//! path walk, `fstat`, `close`) was nearly half of the daemon's CPU serving 4 KiB blocks
//! (`perf`, README "Profile"). A kept descriptor is reused only while its path still names
//! the same file: one `statx` of the path (not following a final symlink) must give the
//! identity (device, inode, size, mtime) the file had when it was opened, with
//! `RESOLVE_NO_SYMLINKS`, from that same path; otherwise the file is opened afresh. So a
//! file replaced, grown or removed is never served from a stale descriptor, and no file is
//! reached that a fresh open would refuse.
//!
//! An open descriptor of a deleted file keeps its disk space allocated, so entries do not
//! linger: the daemon's own removals drop theirs at once ([`OpenFiles::invalidate`],
//! [`OpenFiles::invalidate_under`]), and entries unused for [`OpenFiles::evict_idle`]'s
//! bound go (files Spark's executors delete themselves are released that way). At most
//! `capacity` descriptors are kept; when full, entries idle for a second make room, and if
//! none is, the file is served without being kept. An open that fails because the process
//! is out of descriptors (`EMFILE`, `ENFILE`) closes every kept one and is tried once more
//! ([`OpenFiles::shed`]; so do the store's other opens, through [`OpenFiles::open_uncached`],
//! and the accept loop sheds them when `accept` fails that way), so the cache never stands
//! between a request and the file it names.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::fsio;
use super::index::FileIdentity;

/// An open data file: the descriptor, the identity it had when opened, its length.
#[derive(Debug, Clone)]
pub struct OpenFile {
    /// The descriptor (shared with streams serving it).
    pub file: Arc<File>,
    /// Device, inode, size and mtime when opened (what the index is validated against).
    pub identity: FileIdentity,
    /// Length in bytes.
    pub len: u64,
}

#[derive(Debug)]
struct Entry {
    open: OpenFile,
    /// Milliseconds since the cache's epoch at the last use.
    last_used: AtomicU64,
}

/// Kept descriptors of data files (see the module docs).
#[derive(Debug)]
pub struct OpenFiles {
    entries: DashMap<PathBuf, Entry, foldhash::fast::RandomState>,
    capacity: usize,
    epoch: Instant,
}

impl OpenFiles {
    /// A cache keeping at most `capacity` descriptors (0: none, every use opens the file).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            capacity,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The file at `path`: the kept descriptor if the path still names the same file, else
    /// opened afresh (refusing symlinks anywhere on the path) and kept. `Ok(None)` when there
    /// is no such file.
    ///
    /// # Errors
    /// A refused or failed open, or a failed `fstat` of the new descriptor.
    pub fn open(&self, path: &Path) -> io::Result<Option<OpenFile>> {
        // Taken out first: no map shard stays locked across the `statx`.
        let kept = self.entries.get(path).map(|hit| {
            hit.last_used.store(self.now_ms(), Ordering::Relaxed);
            hit.open.clone()
        });
        if let Some(kept) = kept {
            let same = std::fs::symlink_metadata(path)
                .is_ok_and(|meta| FileIdentity::of(&meta) == kept.identity);
            if same {
                return Ok(Some(kept));
            }
            self.entries
                .remove_if(path, |_, e| Arc::ptr_eq(&e.open.file, &kept.file));
        }
        let file = match self.open_uncached(path) {
            Ok(file) => file,
            Err(e) if fsio::is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let open = OpenFile {
            file: Arc::new(file),
            identity: FileIdentity::of(&meta),
            len: meta.len(),
        };
        if meta.is_file() && self.make_room() {
            self.entries.insert(
                path.to_path_buf(),
                Entry {
                    open: open.clone(),
                    last_used: AtomicU64::new(self.now_ms()),
                },
            );
        }
        Ok(Some(open))
    }

    /// `path` opened afresh (refusing symlinks anywhere on the path) and not kept: for the
    /// daemon's other files (index, RDD block, checksum), which also get a second try after
    /// [`OpenFiles::shed`] when the process is out of descriptors.
    ///
    /// # Errors
    /// A refused or failed open.
    pub fn open_uncached(&self, path: &Path) -> io::Result<File> {
        retry_after_shedding(|| fsio::open_no_symlinks(path), || self.shed())
    }

    /// Whether there is room for one more entry, after dropping entries idle for a second
    /// if the cache is full.
    fn make_room(&self) -> bool {
        if self.entries.len() < self.capacity {
            return true;
        }
        if self.capacity > 0 {
            self.evict_idle(Duration::from_secs(1));
        }
        self.entries.len() < self.capacity
    }

    /// Drops the entries unused for `max_idle` or longer; returns how many.
    pub fn evict_idle(&self, max_idle: Duration) -> usize {
        let max_idle = u64::try_from(max_idle.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_ms();
        let before = self.entries.len();
        self.entries
            .retain(|_, e| now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < max_idle);
        before.saturating_sub(self.entries.len())
    }

    /// Closes every kept descriptor (the process ran out of them), counted in
    /// `kshuffle_data_files_shed_total`; returns how many.
    pub fn shed(&self) -> usize {
        let before = self.entries.len();
        self.entries.clear();
        metrics::counter!("kshuffle_data_files_shed_total").increment(before as u64);
        before
    }

    /// Forgets the descriptor of `path` (the file is being removed).
    pub fn invalidate(&self, path: &Path) {
        self.entries.remove(path);
    }

    /// Forgets every descriptor under `dir` (it is being removed).
    pub fn invalidate_under(&self, dir: &Path) {
        self.entries.retain(|path, _| !path.starts_with(dir));
    }

    /// Descriptors kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether `e` says the process (`EMFILE`) or the system (`ENFILE`) has no file
/// descriptor left.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error().is_some_and(|code| {
        code == Errno::MFILE.raw_os_error() || code == Errno::NFILE.raw_os_error()
    })
}

/// `open`, tried once more after `shed` closed some descriptors if it failed for want of
/// them.
fn retry_after_shedding<T>(
    mut open: impl FnMut() -> io::Result<T>,
    shed: impl FnOnce() -> usize,
) -> io::Result<T> {
    match open() {
        Err(e) if out_of_descriptors(&e) => {
            let closed = shed();
            if closed == 0 {
                return Err(e);
            }
            tracing::warn!(error = %e, closed,
                "out of file descriptors: closed the kept data files and opening again (raise the open-files limit or lower --open-data-files)");
            open()
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::FileExt;

    fn contents(open: &OpenFile) -> Vec<u8> {
        let mut buf = vec![0u8; usize::try_from(open.len).unwrap()];
        open.file.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    #[test]
    fn a_kept_descriptor_is_reused_only_while_its_path_names_the_same_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(tmp.path()).unwrap();
        let path = dir.join("shuffle_0_1_0.data");
        std::fs::write(&path, b"first").unwrap();
        let files = OpenFiles::new(8);

        let a = files.open(&path).unwrap().unwrap();
        let b = files.open(&path).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a.file, &b.file), "reused");
        assert_eq!(files.len(), 1);

        // Replaced by rename (as Spark commits a map output): the new file, opened afresh.
        let tmp_file = dir.join("shuffle_0_1_0.data.tmp");
        std::fs::write(&tmp_file, b"second!").unwrap();
        std::fs::rename(&tmp_file, &path).unwrap();
        let c = files.open(&path).unwrap().unwrap();
        assert!(!Arc::ptr_eq(&a.file, &c.file));
        assert_eq!(contents(&c), b"second!");

        // Grown in place: its size changed, so it is opened afresh too.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all_at(b"+", 7)
            .unwrap();
        let d = files.open(&path).unwrap().unwrap();
        assert!(!Arc::ptr_eq(&c.file, &d.file));
        assert_eq!(d.len, 8);

        // Removed: no file, and the entry is gone.
        std::fs::remove_file(&path).unwrap();
        assert!(files.open(&path).unwrap().is_none());
        assert!(files.is_empty());
    }

    #[test]
    fn a_symlink_put_in_place_of_a_kept_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(tmp.path()).unwrap();
        let path = dir.join("shuffle_0_1_0.data");
        let secret = dir.join("secret");
        std::fs::write(&path, b"mine").unwrap();
        std::fs::write(&secret, b"not yours").unwrap();
        let files = OpenFiles::new(8);
        files.open(&path).unwrap().unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        assert!(files.open(&path).is_err(), "a fresh open refuses the link");
        let mut served = String::new();
        if let Ok(Some(open)) = files.open(&path) {
            (&*open.file).read_to_string(&mut served).unwrap();
        }
        assert_eq!(served, "");
    }

    #[test]
    fn entries_are_bounded_and_released_when_idle_or_invalidated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir(dir.join("a")).unwrap();
        let paths: Vec<PathBuf> = (0..3)
            .map(|i| {
                let p = dir.join("a").join(format!("shuffle_0_{i}_0.data"));
                std::fs::write(&p, b"x").unwrap();
                p
            })
            .collect();
        let files = OpenFiles::new(2);
        for p in &paths {
            files.open(p).unwrap().unwrap();
        }
        // Full with two entries used just now: the third was served, not kept.
        assert_eq!(files.len(), 2);
        assert_eq!(files.evict_idle(Duration::from_secs(60)), 0);
        files.invalidate(&paths[0]);
        assert_eq!(files.len(), 1);
        files.open(&paths[2]).unwrap().unwrap();
        files.invalidate_under(&dir.join("a"));
        assert!(files.is_empty());
        files.open(&paths[1]).unwrap().unwrap();
        assert_eq!(files.evict_idle(Duration::ZERO), 1);
        assert!(files.is_empty());

        let none = OpenFiles::new(0);
        none.open(&paths[0]).unwrap().unwrap();
        assert!(none.is_empty(), "capacity 0 keeps nothing");
    }

    #[test]
    fn an_open_out_of_descriptors_closes_the_kept_ones_and_is_tried_once_more() {
        let emfile = || io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        let enfile = || io::Error::from_raw_os_error(rustix::io::Errno::NFILE.raw_os_error());
        assert!(out_of_descriptors(&emfile()) && out_of_descriptors(&enfile()));
        assert!(!out_of_descriptors(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));

        // Out of descriptors once: shed, then the second try succeeds.
        let mut tries = 0;
        let mut shed = 0;
        let got = retry_after_shedding(
            || {
                tries += 1;
                if tries == 1 { Err(emfile()) } else { Ok(tries) }
            },
            || {
                shed += 1;
                3
            },
        );
        assert_eq!(got.unwrap(), 2);
        assert_eq!(shed, 1);

        // Nothing to shed: the error as it was, no second try.
        let mut tries = 0;
        let err = retry_after_shedding::<()>(
            || {
                tries += 1;
                Err(enfile())
            },
            || 0,
        )
        .unwrap_err();
        assert!(out_of_descriptors(&err));
        assert_eq!(tries, 1);

        // Any other error: not retried, nothing shed.
        let mut tries = 0;
        let err = retry_after_shedding::<()>(
            || {
                tries += 1;
                Err(io::Error::from(io::ErrorKind::PermissionDenied))
            },
            || panic!("shed for another error"),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(tries, 1);

        // Shedding closes every kept descriptor; streams holding one keep theirs.
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(tmp.path()).unwrap();
        let files = OpenFiles::new(8);
        let mut held = Vec::new();
        for i in 0..3 {
            let p = dir.join(format!("shuffle_0_{i}_0.data"));
            std::fs::write(&p, b"x").unwrap();
            held.push(files.open(&p).unwrap().unwrap());
        }
        assert_eq!(files.shed(), 3);
        assert!(files.is_empty());
        assert!(held.iter().all(|open| contents(open) == b"x"));
    }
}
