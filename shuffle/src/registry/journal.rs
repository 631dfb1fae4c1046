//! The durable registry: an append-only journal of registrations under `--state-dir`,
//! `fsync`ed before the reply to `RegisterExecutor` goes out, replayed at start.
//!
//! Why a journal and not an embedded database: registrations are rare (one per executor
//! start), small, and only ever replayed whole at start; the data set is the live executors
//! of one node (thousands, not millions). An append-only file with a checksummed record
//! format gives the same guarantee (durable before acknowledged, torn tails detected) in a
//! couple of hundred lines, with no extra dependency, and stays readable by `strings`.
//!
//! Format: an 8-byte magic, then records of `u32 LE payload length`, `u32 LE CRC-32C of the
//! payload`, payload (one JSON [`Record`]). Replay:
//! - a record cut short at the end of the file, or a last record whose checksum fails, is a
//!   torn write: it is dropped and the file truncated, with a warning;
//! - a bad record followed by more data is corruption: the whole file is moved aside as
//!   `registry.journal.corrupt-<unix time>` for inspection, the records read before it are
//!   kept and written to a fresh journal, and the loss is logged as an error and counted
//!   (`kshuffle_registry_recovered_with_loss`).
//!
//! Concurrent registrations share their `fdatasync` (group commit: see
//! `JournalRegistry::append`), so a burst of executors starting costs a few syncs, not one
//! each. A failed append (disk full) truncates the file back to where it was, so a
//! half-written record never stays behind, and the registration is refused; a failed sync
//! truncates back to the last synced length and refuses every registration it covered. The
//! file is compacted (rewritten with only live entries, then renamed over the old one) when
//! dead records outnumber live ones; compaction waits for registrations in progress, so a
//! record appended but not yet in memory is never compacted away.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::{AppId, Error, ExecId, Executor, MemoryRegistry, Registry};
use crate::store::checksum::Checksum;
use crate::store::layout::ChecksumAlgorithm;

const MAGIC: &[u8; 8] = b"KSHJRNL1";
const FILE_NAME: &str = "registry.journal";
/// Largest record accepted at replay (a registration is well under 64 KiB).
const MAX_RECORD_BYTES: u32 = 1 << 20;

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Register {
        app_id: String,
        exec_id: String,
        local_dirs: Vec<String>,
        resolved_dirs: Vec<PathBuf>,
        sub_dirs_per_local_dir: u32,
        shuffle_manager: String,
    },
    RemoveApp {
        app_id: String,
    },
}

impl Record {
    fn register(e: &Executor) -> Self {
        Record::Register {
            app_id: e.app_id.0.clone(),
            exec_id: e.exec_id.0.clone(),
            local_dirs: e.local_dirs.clone(),
            resolved_dirs: e.resolved_dirs.clone(),
            sub_dirs_per_local_dir: e.sub_dirs_per_local_dir,
            shuffle_manager: e.shuffle_manager.clone(),
        }
    }
}

/// What replay found, for the start-up log and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records replayed.
    pub records: usize,
    /// Executors registered after replay.
    pub executors: usize,
    /// A torn record at the tail was dropped.
    pub torn_tail: bool,
    /// Corruption before the tail: records after it are lost; the old file was kept here.
    pub moved_aside: Option<PathBuf>,
}

struct Journal {
    /// Shared so that a sync can run without the lock (see `JournalRegistry::append`).
    file: Arc<File>,
    /// Bytes in the file, synced or not.
    len: u64,
    records: usize,
    /// Sequence number of the last record written (not necessarily synced).
    written: u64,
    /// Every record up to this sequence number is durable (or was lost, see `lost`).
    synced: u64,
    /// The file length when `synced` was reached: where a failed sync truncates back to.
    synced_len: u64,
    /// Sequence ranges whose sync failed: those records were truncated away. Bounded: a
    /// writer checks right after its own write, so only recent failures matter.
    lost: std::collections::VecDeque<std::ops::RangeInclusive<u64>>,
    /// A writer is syncing (without the lock); the others wait for its outcome.
    syncing: bool,
    /// Successful syncs of appended records.
    syncs: u64,
    #[cfg(test)]
    fail_next_sync: bool,
    /// Makes the next sync wait for a message first (tests of what happens meanwhile).
    #[cfg(test)]
    hold_next_sync: Option<std::sync::mpsc::Receiver<()>>,
}

/// Failed-sync ranges remembered for writers still waiting on them.
const LOST_RANGES_KEPT: usize = 64;

impl Journal {
    fn new(file: File, len: u64, records: usize) -> Self {
        Journal {
            file: Arc::new(file),
            len,
            records,
            written: 0,
            synced: 0,
            synced_len: len,
            lost: std::collections::VecDeque::new(),
            syncing: false,
            syncs: 0,
            #[cfg(test)]
            fail_next_sync: false,
            #[cfg(test)]
            hold_next_sync: None,
        }
    }

    /// What syncs the file outside the lock: `fdatasync` on a shared handle (or, in tests, an
    /// injected failure).
    fn sync_job(&mut self) -> impl FnOnce() -> io::Result<()> + use<> {
        let file = Arc::clone(&self.file);
        #[cfg(test)]
        let (fail, hold) = (
            std::mem::take(&mut self.fail_next_sync),
            self.hold_next_sync.take(),
        );
        #[cfg(not(test))]
        let fail = false;
        move || {
            #[cfg(test)]
            if let Some(hold) = hold {
                let _ = hold.recv();
            }
            if fail {
                return Err(io::Error::other("injected fsync failure"));
            }
            file.sync_data()
        }
    }
}

/// Registrations in memory, made durable by the journal.
pub struct JournalRegistry {
    memory: MemoryRegistry,
    journal: Mutex<Journal>,
    /// Signalled when a sync ends (see [`JournalRegistry::append`]).
    sync_done: Condvar,
    /// Held shared from a record's append until the in-memory registry has it, and
    /// exclusively by compaction, which rewrites the file from the in-memory registry: a
    /// record appended but not yet in memory is never compacted away.
    compaction: RwLock<()>,
    dir: PathBuf,
}

impl std::fmt::Debug for JournalRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalRegistry")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn crc(payload: &[u8]) -> u32 {
    let mut sum = Checksum::new(ChecksumAlgorithm::Crc32c);
    sum.update(payload);
    sum.value() as u32
}

fn encode(record: &Record) -> io::Result<Vec<u8>> {
    let payload = serde_json::to_vec(record).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

enum Next {
    Record(Record, u64),
    End,
    Torn,
    Corrupt(String),
}

/// Reads the record at `pos` of a file of `file_len` bytes.
fn read_record(reader: &mut impl Read, pos: u64, file_len: u64) -> io::Result<Next> {
    if pos == file_len {
        return Ok(Next::End);
    }
    if file_len - pos < 8 {
        return Ok(Next::Torn);
    }
    let mut head = [0u8; 8];
    reader.read_exact(&mut head)?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = head;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let sum = u32::from_le_bytes([c0, c1, c2, c3]);
    let end = pos + 8 + u64::from(len);
    if end > file_len {
        return Ok(if len > MAX_RECORD_BYTES {
            Next::Corrupt(format!("record length {len} at offset {pos}"))
        } else {
            Next::Torn
        });
    }
    if len > MAX_RECORD_BYTES {
        return Ok(Next::Corrupt(format!(
            "record length {len} at offset {pos}"
        )));
    }
    let mut payload = vec![0u8; len as usize];
    reader.read_exact(&mut payload)?;
    if crc(&payload) != sum {
        return Ok(if end == file_len {
            Next::Torn
        } else {
            Next::Corrupt(format!("checksum mismatch at offset {pos}"))
        });
    }
    match serde_json::from_slice(&payload) {
        Ok(record) => Ok(Next::Record(record, end)),
        Err(e) => Ok(Next::Corrupt(format!(
            "undecodable record at offset {pos}: {e}"
        ))),
    }
}

fn apply(memory: &MemoryRegistry, record: Record) {
    match record {
        Record::Register {
            app_id,
            exec_id,
            local_dirs,
            resolved_dirs,
            sub_dirs_per_local_dir,
            shuffle_manager,
        } => {
            // In-memory inserts cannot fail.
            let _ = memory.insert(Arc::new(Executor {
                app_id: AppId(app_id),
                exec_id: ExecId(exec_id),
                local_dirs,
                resolved_dirs,
                sub_dirs_per_local_dir,
                shuffle_manager,
            }));
        }
        Record::RemoveApp { app_id } => {
            let _ = memory.remove_app(&app_id);
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl JournalRegistry {
    /// Opens (or creates) the journal in `dir` and replays it.
    ///
    /// # Errors
    /// When `dir` cannot be created or the journal cannot be opened, read or rewritten.
    /// Corruption is not an error (see the module docs).
    pub fn open(dir: &Path) -> io::Result<(Self, Recovery)> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("state dir {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let memory = MemoryRegistry::new();
        let mut recovery = Recovery::default();
        let ctx =
            |e: io::Error| io::Error::new(e.kind(), format!("journal {}: {e}", path.display()));

        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(ctx)?;
        let file_len = file.metadata().map_err(ctx)?.len();
        let mut valid_end = 0u64;
        let mut corrupt = None;
        if file_len == 0 {
            file.write_all(MAGIC).map_err(ctx)?;
            file.sync_all().map_err(ctx)?;
            sync_dir(dir).map_err(ctx)?;
            valid_end = MAGIC.len() as u64;
        } else {
            let mut reader = BufReader::new(&file);
            let mut magic = [0u8; 8];
            if file_len < 8 || reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
                corrupt = Some("not a kshuffle journal (bad magic)".to_owned());
            } else {
                valid_end = 8;
                loop {
                    match read_record(&mut reader, valid_end, file_len).map_err(ctx)? {
                        Next::Record(record, end) => {
                            apply(&memory, record);
                            recovery.records += 1;
                            valid_end = end;
                        }
                        Next::End => break,
                        Next::Torn => {
                            recovery.torn_tail = true;
                            break;
                        }
                        Next::Corrupt(why) => {
                            corrupt = Some(why);
                            break;
                        }
                    }
                }
            }
        }
        recovery.executors = memory.len();
        let mut journal = Journal::new(file, valid_end, recovery.records);
        if let Some(why) = corrupt {
            let aside = dir.join(format!(
                "{FILE_NAME}.corrupt-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            ));
            std::fs::rename(&path, &aside).map_err(ctx)?;
            error!(reason = %why, moved_to = %aside.display(), recovered = recovery.executors,
                "registry journal is corrupt before its tail: registrations after the corruption are LOST; the file was moved aside for inspection");
            recovery.moved_aside = Some(aside);
            journal = Self::write_compacted(dir, &memory)?;
        } else if recovery.torn_tail {
            warn!(
                offset = valid_end,
                "registry journal ends in a torn record (a crash mid-write); dropping it"
            );
            journal.file.set_len(valid_end).map_err(ctx)?;
            journal.file.sync_all().map_err(ctx)?;
        }
        let registry = Self {
            memory,
            journal: Mutex::new(journal),
            sync_done: Condvar::new(),
            compaction: RwLock::new(()),
            dir: dir.to_path_buf(),
        };
        if recovery.moved_aside.is_none() {
            registry.maybe_compact()?;
        }
        info!(executors = recovery.executors, records = recovery.records, dir = %dir.display(), "registry loaded");
        Ok((registry, recovery))
    }

    /// Writes a journal holding exactly the live entries of `memory` and renames it into
    /// place.
    fn write_compacted(dir: &Path, memory: &MemoryRegistry) -> io::Result<Journal> {
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let mut out = Vec::with_capacity(MAGIC.len() + memory.len() * 256);
        out.extend_from_slice(MAGIC);
        let mut records = 0;
        for executor in memory.all() {
            out.extend_from_slice(&encode(&Record::register(&executor))?);
            records += 1;
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dir.join(FILE_NAME))?;
        sync_dir(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(dir.join(FILE_NAME))?;
        Ok(Journal::new(file, out.len() as u64, records))
    }

    fn maybe_compact(&self) -> io::Result<()> {
        let _exclusive = self.compaction.write().unwrap_or_else(|e| e.into_inner());
        let mut journal = self.lock();
        let live = self.memory.len();
        if journal.records > 2 * live + 1024 {
            let mut compacted = Self::write_compacted(&self.dir, &self.memory)?;
            // Everything live is in the new file, synced: so is every record written so far.
            compacted.written = journal.written;
            compacted.synced = journal.written;
            compacted.lost = std::mem::take(&mut journal.lost);
            // No append is in progress (they hold `compaction` shared), so no sync either.
            compacted.syncing = journal.syncing;
            compacted.syncs = journal.syncs;
            *journal = compacted;
            info!(live, "registry journal compacted");
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one record durably, or leaves the file as it was. The caller holds
    /// `compaction` shared.
    ///
    /// Group commit: the record is written under the lock. If no sync is running, the writer
    /// leads one: it notes how far the file goes, releases the lock, runs `fdatasync`, and
    /// takes the lock back to record the outcome, which covers every record written before
    /// the sync started. Writers that arrive while a sync runs append theirs meanwhile and
    /// wait; when it ends, those it did not cover elect the next leader, whose one sync covers
    /// them all. (Syncing under the lock let no one append during a sync, so nearly every
    /// registration paid its own `fdatasync`.) A failed sync truncates the file back to the
    /// last synced length and fails every record written since (those appended during the
    /// sync included: they were cut too), so no acknowledged record can be lost and no refused
    /// one stays behind.
    fn append(&self, record: &Record) -> Result<(), Error> {
        let bytes = encode(record).map_err(Error::Store)?;
        let mut journal = self.lock();
        if let Err(e) = (&*journal.file).write_all(&bytes) {
            // Take back whatever part of the record reached the file.
            let len = journal.len;
            Self::truncate(&mut journal, len);
            return Err(Error::Store(e));
        }
        journal.len += bytes.len() as u64;
        journal.records += 1;
        journal.written += 1;
        let seq = journal.written;
        let mut led = false;
        loop {
            if journal.lost.iter().any(|range| range.contains(&seq)) {
                return Err(Error::Store(io::Error::other(
                    "the journal could not be synced; the record was dropped",
                )));
            }
            if journal.synced >= seq {
                if !led {
                    metrics::counter!("kshuffle_registry_group_commit_followers_total")
                        .increment(1);
                }
                return Ok(());
            }
            if journal.syncing {
                journal = self
                    .sync_done
                    .wait(journal)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            led = true;
            journal.syncing = true;
            let (through, through_len) = (journal.written, journal.len);
            let sync = journal.sync_job();
            drop(journal);
            let result = sync();
            journal = self.lock();
            journal.syncing = false;
            match result {
                Ok(()) => {
                    journal.synced = journal.synced.max(through);
                    journal.synced_len = journal.synced_len.max(through_len);
                    journal.syncs += 1;
                    metrics::counter!("kshuffle_registry_syncs_total").increment(1);
                }
                Err(e) => {
                    // Everything after the last good sync is cut: what this sync covered and
                    // what was appended while it ran.
                    let (from, to) = (journal.synced + 1, journal.written);
                    error!(error = %e, records = to + 1 - from,
                        "cannot sync the registry journal; dropping the unsynced records");
                    let synced_len = journal.synced_len;
                    journal.records = journal.records.saturating_sub((to + 1 - from) as usize);
                    Self::truncate(&mut journal, synced_len);
                    journal.synced = to;
                    if journal.lost.len() == LOST_RANGES_KEPT {
                        journal.lost.pop_front();
                    }
                    journal.lost.push_back(from..=to);
                    self.sync_done.notify_all();
                    return Err(Error::Store(e));
                }
            }
            self.sync_done.notify_all();
        }
    }

    /// Cuts the file back to `len` (what is known good) and moves the write position there.
    fn truncate(journal: &mut Journal, len: u64) {
        if let Err(t) = journal
            .file
            .set_len(len)
            .and_then(|()| journal.file.sync_all())
        {
            error!(error = %t, "cannot truncate the journal after a failed append");
        }
        journal.len = len;
        let _ = (&*journal.file).seek(SeekFrom::End(0));
    }
}

impl Registry for JournalRegistry {
    fn insert(&self, executor: Arc<Executor>) -> Result<(), Error> {
        let _shared = self.compaction.read().unwrap_or_else(|e| e.into_inner());
        self.append(&Record::register(&executor))?;
        self.memory.insert(executor)
    }

    fn get(&self, app: &str, exec: &str) -> Option<Arc<Executor>> {
        self.memory.get(app, exec)
    }

    fn executors_of(&self, app: &str) -> Vec<Arc<Executor>> {
        self.memory.executors_of(app)
    }

    fn remove_app(&self, app: &str) -> Result<Vec<Arc<Executor>>, Error> {
        if self.memory.executors_of(app).is_empty() {
            return Ok(Vec::new());
        }
        let removed = {
            let _shared = self.compaction.read().unwrap_or_else(|e| e.into_inner());
            self.append(&Record::RemoveApp {
                app_id: app.to_owned(),
            })?;
            self.memory.remove_app(app)?
        };
        self.maybe_compact().map_err(Error::Store)?;
        Ok(removed)
    }

    fn apps(&self) -> Vec<AppId> {
        self.memory.apps()
    }

    fn all(&self) -> Vec<Arc<Executor>> {
        self.memory.all()
    }

    fn len(&self) -> usize {
        self.memory.len()
    }

    fn flush(&self) -> Result<(), Error> {
        self.lock().file.sync_all().map_err(Error::Store)
    }
}

#[cfg(test)]
mod tests;
