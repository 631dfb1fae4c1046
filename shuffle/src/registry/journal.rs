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
//! Registrations do not each pay an `fdatasync`: a writer appends its record under the lock
//! and returns a [`Pending`]; one syncer thread per journal syncs whatever has been written
//! since its last sync, then applies those changes to the in-memory registry (so a
//! registration is served only once it is durable) and wakes their writers: async ones
//! through a `watch` channel (a registration holds no thread while its record is synced),
//! blocking ones through a condition variable. Writers that arrive during a sync share the
//! next one (group commit), so a burst of executors starting costs a few syncs, not one each.
//! A failed append (disk full) truncates the file back to where it was, so a half-written
//! record never stays behind, and the registration is refused; a failed sync truncates back
//! to the last synced length and refuses every change written since, none of which ever
//! reached memory. The file is compacted (rewritten with the live entries, then the changes
//! not yet synced, and renamed over the old one) when dead records outnumber live ones;
//! compaction runs under the lock, between syncs, so nothing written is ever compacted away.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
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

/// A change written to the file and not yet synced: applied to memory once a sync covers it.
enum Change {
    Register(Arc<Executor>),
    RemoveApp(AppId),
}

impl Change {
    fn record(&self) -> Record {
        match self {
            Change::Register(e) => Record::register(e),
            Change::RemoveApp(app) => Record::RemoveApp {
                app_id: app.0.clone(),
            },
        }
    }
}

struct Journal {
    /// Shared so that a sync can run without the lock (see [`Shared::sync`]).
    file: Arc<File>,
    /// Bytes in the file, synced or not.
    len: u64,
    records: usize,
    /// Sequence number of the last record written (not necessarily synced).
    written: u64,
    /// Every record up to this sequence number is settled: durable, or lost (see `lost`).
    synced: u64,
    /// The file length when `synced` was reached: where a failed sync truncates back to.
    synced_len: u64,
    /// Sequence ranges whose sync failed: those records were truncated away. Bounded: a
    /// writer checks as soon as its record is settled, so only recent failures matter.
    lost: VecDeque<(RangeInclusive<u64>, Arc<str>)>,
    /// The changes written after `synced`, in sequence order, not yet in memory (a record
    /// written by tests alone has none).
    unsynced: VecDeque<(u64, Change)>,
    /// What each synced `RemoveApp` removed from memory, by sequence, until its writer
    /// takes it.
    removed: HashMap<u64, Vec<Arc<Executor>>>,
    /// The syncer is syncing (without the lock).
    syncing: bool,
    /// The registry is being dropped: the syncer stops once everything written is settled.
    closing: bool,
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
            lost: VecDeque::new(),
            unsynced: VecDeque::new(),
            removed: HashMap::new(),
            syncing: false,
            closing: false,
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
    shared: Arc<Shared>,
    /// The syncer thread (see the module docs); joined on drop.
    syncer: Option<JoinHandle<()>>,
}

/// What the registry, its syncer thread and the writers waiting on a [`Pending`] share.
struct Shared {
    /// Exactly the synced changes: a change reaches memory only once its record is durable.
    memory: MemoryRegistry,
    journal: Mutex<Journal>,
    /// Signalled when a record is written, and when the registry closes (the syncer waits).
    written: Condvar,
    /// Signalled when a sync ends (blocking writers and compaction wait).
    sync_done: Condvar,
    /// `synced` after each sync, for async writers.
    synced_tx: watch::Sender<u64>,
    dir: PathBuf,
}

impl std::fmt::Debug for JournalRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalRegistry")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

/// A change written to a registry, settled (durable and applied, or refused) once
/// [`Pending::durable`] or [`Pending::durable_blocking`] returns `Ok` (or an error).
#[must_use = "a change is acknowledged only once it is durable"]
pub struct Pending(Option<(Arc<Shared>, u64)>);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pending")
            .field(&self.0.as_ref().map(|(_, seq)| seq))
            .finish()
    }
}

impl Pending {
    /// A change that is already durable (or needs no durability).
    pub fn done() -> Self {
        Pending(None)
    }

    /// Waits, without holding a thread, until the change is durable and served.
    ///
    /// # Errors
    /// When the sync that covered it failed: the change was dropped.
    pub async fn durable(self) -> Result<(), Error> {
        let Some((shared, seq)) = self.0 else {
            return Ok(());
        };
        let mut synced = shared.synced_tx.subscribe();
        // The sender lives in `shared`, which this holds: the wait cannot fail.
        let _ = synced.wait_for(|&through| through >= seq).await;
        let journal = shared.lock();
        settled(&journal, seq).unwrap_or_else(|| Err(not_synced("the registry closed")))
    }

    /// Blocks until the change is durable and served.
    ///
    /// # Errors
    /// When the sync that covered it failed: the change was dropped.
    pub fn durable_blocking(self) -> Result<(), Error> {
        let Some((shared, seq)) = self.0 else {
            return Ok(());
        };
        let mut journal = shared.lock();
        loop {
            if let Some(outcome) = settled(&journal, seq) {
                return outcome;
            }
            journal = shared
                .sync_done
                .wait(journal)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The outcome of the change with sequence `seq`, once a sync has settled it.
fn settled(journal: &Journal, seq: u64) -> Option<Result<(), Error>> {
    if journal.synced < seq {
        return None;
    }
    match journal.lost.iter().find(|(range, _)| range.contains(&seq)) {
        Some((_, why)) => Some(Err(not_synced(why))),
        None => Some(Ok(())),
    }
}

fn not_synced(why: &str) -> Error {
    Error::Store(io::Error::other(format!(
        "the journal could not be synced ({why}); the record was dropped"
    )))
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

impl From<Record> for Change {
    fn from(record: Record) -> Self {
        match record {
            Record::Register {
                app_id,
                exec_id,
                local_dirs,
                resolved_dirs,
                sub_dirs_per_local_dir,
                shuffle_manager,
            } => Change::Register(Arc::new(Executor {
                app_id: AppId(app_id),
                exec_id: ExecId(exec_id),
                local_dirs,
                resolved_dirs,
                sub_dirs_per_local_dir,
                shuffle_manager,
            })),
            Record::RemoveApp { app_id } => Change::RemoveApp(AppId(app_id)),
        }
    }
}

/// Applies `change` to `memory` (replayed at start, or just synced); returns what a
/// `RemoveApp` removed, `None` for a registration.
fn apply(memory: &MemoryRegistry, change: Change) -> Option<Vec<Arc<Executor>>> {
    // In-memory changes cannot fail.
    match change {
        Change::Register(executor) => {
            let _ = memory.insert(executor);
            None
        }
        Change::RemoveApp(app) => Some(memory.remove_app(&app.0).unwrap_or_default()),
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
                            apply(&memory, record.into());
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
            journal = Self::write_compacted(dir, &memory, std::iter::empty())?;
        } else if recovery.torn_tail {
            warn!(
                offset = valid_end,
                "registry journal ends in a torn record (a crash mid-write); dropping it"
            );
            journal.file.set_len(valid_end).map_err(ctx)?;
            journal.file.sync_all().map_err(ctx)?;
        }
        let shared = Arc::new(Shared {
            memory,
            journal: Mutex::new(journal),
            written: Condvar::new(),
            sync_done: Condvar::new(),
            synced_tx: watch::Sender::new(0),
            dir: dir.to_path_buf(),
        });
        if recovery.moved_aside.is_none() {
            shared.maybe_compact()?;
        }
        let syncer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("registry-sync".into())
                .spawn(move || shared.run_syncer())?
        };
        let registry = Self {
            shared,
            syncer: Some(syncer),
        };
        info!(executors = recovery.executors, records = recovery.records, dir = %dir.display(), "registry loaded");
        Ok((registry, recovery))
    }

    /// Writes a journal holding the live entries of `memory`, then `changes`, and renames it
    /// into place.
    fn write_compacted<'a>(
        dir: &Path,
        memory: &MemoryRegistry,
        changes: impl Iterator<Item = &'a Change>,
    ) -> io::Result<Journal> {
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let mut out = Vec::with_capacity(MAGIC.len() + memory.len() * 256);
        out.extend_from_slice(MAGIC);
        let mut records = 0;
        let live = memory.all().into_iter().map(|e| Record::register(&e));
        for record in live.chain(changes.map(Change::record)) {
            out.extend_from_slice(&encode(&record)?);
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
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Compacts the file when dead records dominate. Runs under the lock between syncs, so
    /// the new file holds exactly what the old one did: memory (every synced change), then
    /// the changes written since, all of them durable once it is in place.
    fn maybe_compact(&self) -> io::Result<()> {
        let mut journal = self.lock();
        while journal.syncing {
            journal = self
                .sync_done
                .wait(journal)
                .unwrap_or_else(|e| e.into_inner());
        }
        let live = self.memory.len() + journal.unsynced.len();
        if journal.records > 2 * live + 1024 {
            let changes = journal.unsynced.iter().map(|(_, change)| change);
            let mut compacted = JournalRegistry::write_compacted(&self.dir, &self.memory, changes)?;
            compacted.written = journal.written;
            compacted.synced = journal.synced;
            compacted.lost = std::mem::take(&mut journal.lost);
            compacted.unsynced = std::mem::take(&mut journal.unsynced);
            compacted.removed = std::mem::take(&mut journal.removed);
            compacted.closing = journal.closing;
            compacted.syncs = journal.syncs;
            *journal = compacted;
            let through = journal.written;
            self.settle(&mut journal, through);
            self.wake_writers(&journal);
            info!(live, "registry journal compacted");
        }
        Ok(())
    }

    /// Appends the record of `change` and queues the change for the syncer; returns its
    /// sequence number. On a failed write the file is cut back to where it was.
    fn write(&self, change: Change) -> Result<u64, Error> {
        let bytes = encode(&change.record()).map_err(Error::Store)?;
        let mut journal = self.lock();
        if let Err(e) = (&*journal.file).write_all(&bytes) {
            // Take back whatever part of the record reached the file.
            let len = journal.len;
            truncate(&mut journal, len);
            return Err(Error::Store(e));
        }
        journal.len += bytes.len() as u64;
        journal.records += 1;
        journal.written += 1;
        let seq = journal.written;
        journal.unsynced.push_back((seq, change));
        self.written.notify_one();
        Ok(seq)
    }

    /// The syncer thread: syncs whatever was written since the last sync, until the registry
    /// closes with everything settled.
    fn run_syncer(&self) {
        let mut journal = self.lock();
        loop {
            if journal.written > journal.synced {
                journal = self.sync(journal);
            } else if journal.closing {
                return;
            } else {
                journal = self
                    .written
                    .wait(journal)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// One sync, covering every record written when it starts: `fdatasync` without the
    /// lock, then, under it, the covered changes applied to memory, or, if the sync failed,
    /// the file cut back to the last good sync and every change written since refused
    /// (those written while it ran included: they were cut too). Wakes every writer.
    fn sync<'a>(&'a self, mut journal: MutexGuard<'a, Journal>) -> MutexGuard<'a, Journal> {
        journal.syncing = true;
        let (through, through_len) = (journal.written, journal.len);
        let sync = journal.sync_job();
        drop(journal);
        let result = sync();
        let mut journal = self.lock();
        journal.syncing = false;
        match result {
            Ok(()) => {
                journal.synced_len = journal.synced_len.max(through_len);
                journal.syncs += 1;
                metrics::counter!("kshuffle_registry_syncs_total").increment(1);
                metrics::counter!("kshuffle_registry_synced_records_total")
                    .increment(through.saturating_sub(journal.synced));
                self.settle(&mut journal, through);
            }
            Err(e) => {
                let (from, to) = (journal.synced + 1, journal.written);
                error!(error = %e, records = to + 1 - from,
                    "cannot sync the registry journal; dropping the unsynced records");
                let synced_len = journal.synced_len;
                journal.records = journal.records.saturating_sub((to + 1 - from) as usize);
                truncate(&mut journal, synced_len);
                journal.unsynced.clear();
                journal.synced = to;
                if journal.lost.len() == LOST_RANGES_KEPT {
                    journal.lost.pop_front();
                }
                journal.lost.push_back((from..=to, e.to_string().into()));
            }
        }
        self.wake_writers(&journal);
        journal
    }

    /// Tells every writer waiting for a sync (blocking or async) how far `journal` is now
    /// settled.
    fn wake_writers(&self, journal: &Journal) {
        self.sync_done.notify_all();
        self.synced_tx.send_replace(journal.synced);
    }

    /// The [`Pending`] of the change with sequence `seq`.
    fn pending(self: &Arc<Self>, seq: u64) -> Pending {
        Pending(Some((Arc::clone(self), seq)))
    }

    /// Applies the changes through sequence `through` (now durable) to memory, in order.
    fn settle(&self, journal: &mut Journal, through: u64) {
        while let Some((seq, _)) = journal.unsynced.front()
            && *seq <= through
        {
            let Some((seq, change)) = journal.unsynced.pop_front() else {
                break;
            };
            if let Some(removed) = apply(&self.memory, change) {
                journal.removed.insert(seq, removed);
            }
        }
        journal.synced = journal.synced.max(through);
    }
}

/// Cuts the file back to `len` (what is known good) and moves the write position there.
fn truncate(journal: &mut Journal, len: u64) {
    if let Err(t) = journal
        .file
        .set_len(len)
        .and_then(|()| journal.file.sync_all())
    {
        error!(error = %t, "cannot truncate the journal after a failed write");
    }
    journal.len = len;
    let _ = (&*journal.file).seek(SeekFrom::End(0));
}

impl Drop for JournalRegistry {
    /// Lets the syncer settle what was written, then stops it.
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.written.notify_all();
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
    }
}

impl Registry for JournalRegistry {
    fn insert(&self, executor: Arc<Executor>) -> Result<(), Error> {
        self.begin_insert(executor)?.durable_blocking()
    }

    fn begin_insert(&self, executor: Arc<Executor>) -> Result<Pending, Error> {
        let seq = self.shared.write(Change::Register(executor))?;
        Ok(self.shared.pending(seq))
    }

    fn get(&self, app: &str, exec: &str) -> Option<Arc<Executor>> {
        self.shared.memory.get(app, exec)
    }

    fn executors_of(&self, app: &str) -> Vec<Arc<Executor>> {
        self.shared.memory.executors_of(app)
    }

    fn remove_app(&self, app: &str) -> Result<Vec<Arc<Executor>>, Error> {
        if self.shared.memory.executors_of(app).is_empty() {
            return Ok(Vec::new());
        }
        let seq = self.shared.write(Change::RemoveApp(AppId::from(app)))?;
        self.shared.pending(seq).durable_blocking()?;
        let removed = self.shared.lock().removed.remove(&seq).unwrap_or_default();
        self.shared.maybe_compact().map_err(Error::Store)?;
        Ok(removed)
    }

    fn apps(&self) -> Vec<AppId> {
        self.shared.memory.apps()
    }

    fn all(&self) -> Vec<Arc<Executor>> {
        self.shared.memory.all()
    }

    fn len(&self) -> usize {
        self.shared.memory.len()
    }

    fn flush(&self) -> Result<(), Error> {
        self.shared.lock().file.sync_all().map_err(Error::Store)
    }
}

#[cfg(test)]
mod tests;
