//! Block resolution on disk: from (executor, block) to an open file segment that the
//! connection layer sends with `sendfile`, plus registration checks, file removal and
//! corruption diagnosis.
//!
//! Invariants:
//! - every local dir of a registered executor is canonical and strictly inside an allowed
//!   root (checked at registration);
//! - every path is computed from parsed numbers with Spark's hash layout
//!   ([`layout::locate`]), never taken from the peer;
//! - every file is opened without following symlinks ([`fsio`]);
//! - data files are never read into user memory for serving: callers get an open [`File`]
//!   and a range.
//!
//! The methods do blocking file-system calls. Per-chunk resolution (a lookup in the index
//! cache, one `open` and one `fstat` of a file the executor just wrote) is cheap and is done
//! inline by the connection task; registration, removal and diagnosis run on the blocking
//! pool (see `conn`).

pub mod checksum;
pub mod cleanup;
pub mod fsio;
pub mod index;
pub mod layout;
pub mod open_files;
mod removal;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, warn};

use crate::registry::{self, AppId, ExecId, Executor, Pending, Registry};
use checksum::Checksum;
use index::{FileIdentity, IndexCache};
pub use layout::{BlockFile, ChecksumAlgorithm};
pub use open_files::OpenFiles;
pub use removal::{AppRemoval, SweepOptions, SweepReport};

/// Most local dirs one executor may register.
pub const MAX_LOCAL_DIRS: usize = 64;
/// Most sub-dirs per local dir (`spark.diskStore.subDirectories`) accepted.
pub const MAX_SUB_DIRS: i32 = 1 << 16;
/// Longest app or executor id accepted.
pub const MAX_ID_BYTES: usize = 256;

/// An open file and the byte range of it to send.
#[derive(Debug)]
pub struct Segment {
    /// The open file (a data file or an RDD block file), shared with the [`MapOutput`] it
    /// came from so the next chunk of the same file needs no `open`.
    pub file: Arc<File>,
    /// Where the range starts.
    pub offset: u64,
    /// How many bytes to send.
    pub len: u64,
}

/// One map output opened for serving: its data file (open), the file's length when opened
/// and its parsed index. A stream keeps the last one it used, so consecutive chunks of the
/// same map output (several reduce partitions of one map, as `OpenBlocks` and non-batch
/// `FetchShuffleBlocks` with coalesced partitions ask for) cost one `fstat` each (to see
/// that the file did not change) instead of `open` + `fstat` + `close`, and no index lookup
/// or path building.
///
/// A data file changed in place (size or mtime) is opened again with its index; a map output
/// renamed over or removed while a stream reads it keeps being served from the file that was
/// opened, as one `sendfile` of a file unlinked mid-transfer would be.
#[derive(Debug)]
pub struct MapOutput {
    shuffle_id: i32,
    map_id: i64,
    /// `None` when the map task left no data file.
    data: Option<Arc<File>>,
    /// Without a data file, the index file, opened to stand as the file of the only
    /// segments such a map output has: empty ones.
    blank: Option<Arc<File>>,
    /// The data file's identity when opened (what the index was validated against).
    identity: Option<FileIdentity>,
    data_len: u64,
    index: Arc<index::Index>,
    index_path: PathBuf,
    data_path: PathBuf,
}

// === impl MapOutput ===

impl MapOutput {
    /// Whether this is map output (`shuffle_id`, `map_id`).
    pub fn is(&self, shuffle_id: i32, map_id: i64) -> bool {
        self.shuffle_id == shuffle_id && self.map_id == map_id
    }

    /// Whether the open data file is unchanged since it was opened (same size and mtime:
    /// one `fstat`), so its index and length still hold. `false` without a data file.
    pub fn is_current(&self) -> bool {
        match &self.data {
            Some(file) => file
                .metadata()
                .is_ok_and(|meta| Some(FileIdentity::of(&meta)) == self.identity),
            None => false,
        }
    }

    /// The segment of partitions `start..end`. No system call.
    ///
    /// # Errors
    /// Partitions outside the index, a data file shorter than the index says, or a missing
    /// data file for a non-empty range.
    pub fn segment(&self, start: i32, end: i32) -> Result<Segment, Error> {
        let out_of_range = || Error::ReduceOutOfRange {
            path: self.index_path.clone(),
            start: i64::from(start),
            end: i64::from(end),
            partitions: self.index.partitions(),
        };
        let (start_u, end_u) = match (usize::try_from(start), usize::try_from(end)) {
            (Ok(s), Ok(e)) => (s, e),
            _ => return Err(out_of_range()),
        };
        let (offset, len) = self.index.range(start_u, end_u).ok_or_else(out_of_range)?;
        let Some(file) = &self.data else {
            // A map task that wrote nothing may leave no data file; an empty range of it is
            // still a valid (empty) block.
            return match &self.blank {
                Some(blank) if len == 0 => Ok(Segment {
                    file: Arc::clone(blank),
                    offset: 0,
                    len: 0,
                }),
                _ => Err(Error::DataMissing {
                    path: self.data_path.clone(),
                }),
            };
        };
        if self.data_len < offset + len {
            return Err(Error::DataTruncated {
                path: self.data_path.clone(),
                need: offset + len,
                len: self.data_len,
            });
        }
        Ok(Segment {
            file: Arc::clone(file),
            offset,
            len,
        })
    }
}

/// Why a request could not be served from disk. The `Display` text goes to the Spark client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The (app, executor) pair never registered.
    #[error("Executor is not registered (appId={app}, execId={exec})")]
    UnknownExecutor {
        /// App id.
        app: String,
        /// Executor id.
        exec: String,
    },
    /// A registration was refused.
    #[error("invalid executor registration: {reason}")]
    InvalidRegistration {
        /// What was wrong.
        reason: String,
    },
    /// A registered local dir is outside every allowed root.
    #[error("localDirs entry is not under any of the service's allowed roots: {dir}")]
    LocalDirOutsideRoots {
        /// The dir as registered.
        dir: String,
    },
    /// No index file where the layout says it is.
    #[error("Failed to open file: {path} (no such file)")]
    IndexMissing {
        /// Path of the index file.
        path: PathBuf,
    },
    /// The index file exists but cannot be read (or involves a symlink).
    #[error("Failed to open file: {path}: {source}")]
    IndexUnreadable {
        /// Path of the index file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The index file is not a valid index.
    #[error("Index file {path} is corrupt: {reason}")]
    IndexCorrupt {
        /// Path of the index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The reduce partition range is not in the index.
    #[error(
        "Reduce partitions [{start}, {end}) out of range: map output {path} has {partitions} partitions"
    )]
    ReduceOutOfRange {
        /// Path of the index file.
        path: PathBuf,
        /// First partition requested.
        start: i64,
        /// One past the last partition requested.
        end: i64,
        /// Partitions in the index.
        partitions: usize,
    },
    /// The data file (or an RDD block file) is missing.
    #[error("Failed to open file: {path} (no such file)")]
    DataMissing {
        /// Path of the file.
        path: PathBuf,
    },
    /// The data file exists but cannot be opened or inspected.
    #[error("Failed to open file: {path}: {source}")]
    DataUnreadable {
        /// Path of the file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The data file is shorter than its index says.
    #[error("Data file {path} has {len} bytes, its index needs {need}")]
    DataTruncated {
        /// Path of the data file.
        path: PathBuf,
        /// Bytes the index requires.
        need: u64,
        /// Bytes the file has.
        len: u64,
    },
    /// The registry could not record a registration.
    #[error(transparent)]
    Registry(#[from] registry::Error),
}

/// Who caused an error: the peer's request, the local disk, or the daemon itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A bad or unknown request.
    Peer,
    /// Missing, unreadable or corrupt files.
    Disk,
    /// The daemon's own failure.
    Internal,
}

impl Error {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::UnknownExecutor { .. } => "unknown_executor",
            Error::InvalidRegistration { .. } => "invalid_registration",
            Error::LocalDirOutsideRoots { .. } => "local_dir_outside_roots",
            Error::IndexMissing { .. } => "index_missing",
            Error::IndexUnreadable { .. } => "index_unreadable",
            Error::IndexCorrupt { .. } => "index_corrupt",
            Error::ReduceOutOfRange { .. } => "reduce_out_of_range",
            Error::DataMissing { .. } => "data_missing",
            Error::DataUnreadable { .. } => "data_unreadable",
            Error::DataTruncated { .. } => "data_truncated",
            Error::Registry(e) => e.kind(),
        }
    }

    /// Who caused it.
    pub fn source_party(&self) -> Source {
        match self {
            Error::UnknownExecutor { .. }
            | Error::InvalidRegistration { .. }
            | Error::LocalDirOutsideRoots { .. }
            | Error::ReduceOutOfRange { .. } => Source::Peer,
            Error::IndexMissing { .. }
            | Error::IndexUnreadable { .. }
            | Error::IndexCorrupt { .. }
            | Error::DataMissing { .. }
            | Error::DataUnreadable { .. }
            | Error::DataTruncated { .. } => Source::Disk,
            Error::Registry(_) => Source::Internal,
        }
    }
}

/// Outcome of `DiagnoseCorruption`, as Spark's `Cause` ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CorruptionCause {
    /// The data on disk does not match its checksum file.
    DiskIssue = 0,
    /// The data on disk is fine; the reader's copy differs.
    NetworkIssue = 1,
    /// The checksum file is missing or anything else failed.
    UnknownIssue = 2,
    /// Disk, checksum file and reader agree.
    ChecksumVerifyPass = 3,
    /// The algorithm is not one Spark writes.
    UnsupportedChecksumAlgorithm = 4,
}

/// The block store: registrations plus the files they point at.
pub struct Store {
    registry: Arc<dyn Registry>,
    roots: Vec<PathBuf>,
    index: IndexCache,
    files: OpenFiles,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store over `registry`, confining registrations to `roots` (canonicalized here).
    ///
    /// # Errors
    /// When a root does not exist or cannot be canonicalized, or no root is given.
    pub fn new(
        registry: Arc<dyn Registry>,
        roots: &[PathBuf],
        index_cache_bytes: usize,
        open_files: usize,
    ) -> io::Result<Self> {
        if roots.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no allowed root given",
            ));
        }
        let roots = roots
            .iter()
            .map(|r| {
                std::fs::canonicalize(r).map_err(|e| {
                    io::Error::new(e.kind(), format!("allowed root {}: {e}", r.display()))
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            registry,
            roots,
            index: IndexCache::new(index_cache_bytes),
            files: OpenFiles::new(open_files),
        })
    }

    /// Data-file descriptors kept open between requests (see [`OpenFiles`]).
    pub fn open_files(&self) -> &OpenFiles {
        &self.files
    }

    /// The canonical allowed roots.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The registry behind the store.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// Validates and records `RegisterExecutor`, waiting until the registration is durable.
    /// Blocking; see [`Store::begin_register`].
    ///
    /// # Errors
    /// As [`Store::begin_register`], and `Registry` when the registration cannot be made
    /// durable.
    pub fn register(
        &self,
        app_id: &str,
        exec_id: &str,
        local_dirs: &[String],
        sub_dirs_per_local_dir: i32,
        shuffle_manager: &str,
    ) -> Result<Arc<Executor>, Error> {
        let (executor, pending) = self.begin_register(
            app_id,
            exec_id,
            local_dirs,
            sub_dirs_per_local_dir,
            shuffle_manager,
        )?;
        pending.durable_blocking()?;
        Ok(executor)
    }

    /// Validates `RegisterExecutor` and writes it to the registry. Blocking (canonicalizes
    /// every dir), but returns without waiting for the registration to be durable: it is
    /// served, and may be acknowledged, once the returned [`Pending`] resolves.
    ///
    /// # Errors
    /// `InvalidRegistration` for empty/oversized ids or dir lists, relative or missing dirs,
    /// a bad sub-dir count; `LocalDirOutsideRoots` for a dir outside every root (after
    /// resolving symlinks) or equal to a root; `Registry` when it cannot be written.
    pub fn begin_register(
        &self,
        app_id: &str,
        exec_id: &str,
        local_dirs: &[String],
        sub_dirs_per_local_dir: i32,
        shuffle_manager: &str,
    ) -> Result<(Arc<Executor>, Pending), Error> {
        let invalid = |reason: String| Error::InvalidRegistration { reason };
        check_id("appId", app_id).map_err(invalid)?;
        check_id("execId", exec_id).map_err(invalid)?;
        if local_dirs.is_empty() || local_dirs.len() > MAX_LOCAL_DIRS {
            return Err(invalid(format!(
                "{} local dirs (expected 1 to {MAX_LOCAL_DIRS})",
                local_dirs.len()
            )));
        }
        if !(1..=MAX_SUB_DIRS).contains(&sub_dirs_per_local_dir) {
            return Err(invalid(format!(
                "subDirsPerLocalDir {sub_dirs_per_local_dir} (expected 1 to {MAX_SUB_DIRS})"
            )));
        }
        let resolved_dirs = local_dirs
            .iter()
            .map(|dir| self.confine(dir))
            .collect::<Result<Vec<_>, _>>()?;
        let executor = Arc::new(Executor {
            app_id: AppId(app_id.to_owned()),
            exec_id: ExecId(exec_id.to_owned()),
            local_dirs: local_dirs.to_vec(),
            resolved_dirs,
            sub_dirs_per_local_dir: sub_dirs_per_local_dir.unsigned_abs(),
            shuffle_manager: shuffle_manager.to_owned(),
        });
        let pending = self.registry.begin_insert(Arc::clone(&executor))?;
        Ok((executor, pending))
    }

    /// Resolves one registered local dir: absolute, existing, canonical form strictly inside
    /// an allowed root.
    fn confine(&self, dir: &str) -> Result<PathBuf, Error> {
        let outside = || Error::LocalDirOutsideRoots { dir: truncate(dir) };
        let path = Path::new(dir);
        if dir.is_empty() || !path.is_absolute() || dir.contains('\0') {
            return Err(Error::InvalidRegistration {
                reason: format!("local dir {:?} is not an absolute path", truncate(dir)),
            });
        }
        let canonical = std::fs::canonicalize(path).map_err(|e| Error::InvalidRegistration {
            reason: format!("local dir {}: {e}", truncate(dir)),
        })?;
        let inside = self
            .roots
            .iter()
            .any(|root| canonical.starts_with(root) && canonical != *root);
        if !inside || !canonical.is_dir() {
            return Err(outside());
        }
        Ok(canonical)
    }

    /// The registration of (app, exec).
    ///
    /// # Errors
    /// `UnknownExecutor`.
    pub fn executor(&self, app: &str, exec: &str) -> Result<Arc<Executor>, Error> {
        let unknown = || Error::UnknownExecutor {
            app: truncate(app),
            exec: truncate(exec),
        };
        let executor = self.registry.get(app, exec).ok_or_else(unknown)?;
        // A registration recorded under other roots (the daemon restarted with a different
        // --allowed-root) is not served: confinement holds for the roots of this run.
        if !executor.resolved_dirs.iter().all(|d| self.inside_roots(d)) {
            warn!(
                app,
                exec, "registration outside the current allowed roots ignored"
            );
            return Err(unknown());
        }
        Ok(executor)
    }

    fn path_of(executor: &Executor, file: &BlockFile) -> PathBuf {
        Self::path_with(executor, file, &mut String::with_capacity(64))
    }

    /// [`Store::path_of`], building the name in `name` (empty; reused by the caller).
    fn path_with(executor: &Executor, file: &BlockFile, name: &mut String) -> PathBuf {
        file.write_name(name);
        // A validated registration has at least one dir and sub_dirs >= 1.
        layout::locate(
            &executor.resolved_dirs,
            executor.sub_dirs_per_local_dir,
            name,
        )
        .unwrap_or_else(|| PathBuf::from(&*name))
    }

    /// The segment of partitions `start..end` of map output (`shuffle_id`, `map_id`).
    ///
    /// # Errors
    /// Missing, unreadable or corrupt index/data, or partitions outside the index.
    pub fn shuffle_segment(
        &self,
        executor: &Executor,
        shuffle_id: i32,
        map_id: i64,
        start: i32,
        end: i32,
    ) -> Result<Segment, Error> {
        self.map_output(executor, shuffle_id, map_id)?
            .segment(start, end)
    }

    /// Opens map output (`shuffle_id`, `map_id`) for serving: its data file (kept open), the
    /// file's length and its index (from the cache). Costs one `statx` when the data file's
    /// descriptor is kept ([`OpenFiles`]), else one `open` and one `fstat`; a
    /// [`MapOutput::segment`] of it costs no system call, and checking that it is still
    /// current ([`MapOutput::is_current`]) one `fstat`.
    ///
    /// # Errors
    /// Missing, unreadable or corrupt index, unreadable data file. A missing data file is not
    /// an error here (a map task that wrote nothing may leave none): only its empty ranges
    /// can then be served.
    pub fn map_output(
        &self,
        executor: &Executor,
        shuffle_id: i32,
        map_id: i64,
    ) -> Result<MapOutput, Error> {
        let mut name = String::with_capacity(64);
        let index_file = BlockFile::ShuffleIndex { shuffle_id, map_id };
        let index_path = Self::path_with(executor, &index_file, &mut name);
        name.clear();
        let data_file = BlockFile::ShuffleData { shuffle_id, map_id };
        let data_path = Self::path_with(executor, &data_file, &mut name);
        let data = self
            .files
            .open(&data_path)
            .map_err(|source| Error::DataUnreadable {
                path: data_path.clone(),
                source,
            })?;
        let identity = data.as_ref().map(|d| d.identity);
        let index = self
            .index
            .get(&index_path, identity, |p| self.files.open_uncached(p))?;
        let (data, data_len, blank) = match data {
            Some(d) => (Some(d.file), d.len, None),
            None => {
                let blank = self.files.open_uncached(&index_path).map_err(|source| {
                    Error::IndexUnreadable {
                        path: index_path.clone(),
                        source,
                    }
                })?;
                (None, 0, Some(Arc::new(blank)))
            }
        };
        Ok(MapOutput {
            shuffle_id,
            map_id,
            data,
            blank,
            identity,
            data_len,
            index,
            index_path,
            data_path,
        })
    }

    /// The whole file of RDD block `rdd_<rdd_id>_<split_index>`.
    ///
    /// # Errors
    /// `DataMissing` when there is no such block file, `DataUnreadable` otherwise.
    pub fn rdd_segment(
        &self,
        executor: &Executor,
        rdd_id: i32,
        split_index: i32,
    ) -> Result<Segment, Error> {
        let path = Self::path_of(
            executor,
            &BlockFile::Rdd {
                rdd_id,
                split_index,
            },
        );
        let file = self.files.open_uncached(&path).map_err(|source| {
            if fsio::is_not_found(&source) {
                Error::DataMissing { path: path.clone() }
            } else {
                Error::DataUnreadable {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let meta = file.metadata().map_err(|source| Error::DataUnreadable {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(Error::DataMissing { path });
        }
        Ok(Segment {
            file: Arc::new(file),
            offset: 0,
            len: meta.len(),
        })
    }

    /// `RemoveBlocks`: deletes the named files of `executor`, returning how many were
    /// deleted. Names that are not files Spark writes (anything with a `/`, `..`, temp
    /// files, …) are skipped and logged. Blocking.
    pub fn remove_files(&self, executor: &Executor, names: &[String]) -> usize {
        let mut removed = 0;
        for name in names {
            let Some(file) = BlockFile::parse(name) else {
                warn!(app = %executor.app_id, exec = %executor.exec_id, name = %truncate(name),
                    "RemoveBlocks: not a block file name, skipped");
                continue;
            };
            let path = Self::path_of(executor, &file);
            if matches!(file, BlockFile::ShuffleIndex { .. }) {
                self.index.invalidate(&path);
            }
            self.files.invalidate(&path);
            // `remove_file` unlinks the entry itself and never follows a final symlink; the
            // parent (a hashed sub-dir) must not be a symlink either.
            match path.parent().map(std::fs::symlink_metadata) {
                Some(Ok(meta)) if meta.is_dir() => {}
                _ => {
                    debug!(path = %path.display(), "RemoveBlocks: no such file");
                    continue;
                }
            }
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if fsio::is_not_found(&e) => {
                    debug!(path = %path.display(), "RemoveBlocks: no such file");
                }
                Err(e) => warn!(path = %path.display(), error = %e, "RemoveBlocks: delete failed"),
            }
        }
        removed
    }

    /// `DiagnoseCorruption` for one partition: compares the checksum file, the data on disk
    /// and the reader's `checksum`. Blocking (reads the partition).
    pub fn diagnose(
        &self,
        executor: &Executor,
        shuffle_id: i32,
        map_id: i64,
        reduce_id: i32,
        checksum: i64,
        algorithm: &str,
    ) -> CorruptionCause {
        let Some(algorithm) = ChecksumAlgorithm::parse(algorithm) else {
            return CorruptionCause::UnsupportedChecksumAlgorithm;
        };
        match self.diagnose_inner(executor, shuffle_id, map_id, reduce_id, checksum, algorithm) {
            Ok(cause) => cause,
            Err(e) => {
                debug!(error = %e, "DiagnoseCorruption: cannot verify");
                CorruptionCause::UnknownIssue
            }
        }
    }

    fn diagnose_inner(
        &self,
        executor: &Executor,
        shuffle_id: i32,
        map_id: i64,
        reduce_id: i32,
        reader_checksum: i64,
        algorithm: ChecksumAlgorithm,
    ) -> Result<CorruptionCause, Box<dyn std::error::Error>> {
        let file = BlockFile::ShuffleChecksum {
            shuffle_id,
            map_id,
            algorithm,
        };
        let mut sums = self.files.open_uncached(&Self::path_of(executor, &file))?;
        let entry = u64::try_from(reduce_id)? * 8;
        sums.seek(SeekFrom::Start(entry))?;
        let mut be = [0u8; 8];
        sums.read_exact(&mut be)?;
        let stored = i64::from_be_bytes(be);

        let end = reduce_id.checked_add(1).ok_or("reduce id overflow")?;
        let segment = self.shuffle_segment(executor, shuffle_id, map_id, reduce_id, end)?;
        (&*segment.file).seek(SeekFrom::Start(segment.offset))?;
        let mut reader = (&*segment.file).take(segment.len);
        let mut sum = Checksum::new(algorithm);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sum.update(buf.get(..n).ok_or("short read")?);
        }
        Ok(if sum.value() != stored {
            CorruptionCause::DiskIssue
        } else if stored != reader_checksum {
            CorruptionCause::NetworkIssue
        } else {
            CorruptionCause::ChecksumVerifyPass
        })
    }
}

fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(format!(
            "{what} {:?} is empty, longer than {MAX_ID_BYTES} bytes or has control characters",
            truncate(id)
        ));
    }
    Ok(())
}

/// At most 200 bytes of a peer-supplied string, for messages and logs.
pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests;
