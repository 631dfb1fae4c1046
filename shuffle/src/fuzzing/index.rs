//! Check of the index-file reader: arbitrary bytes as a shuffle index file, arbitrary reduce
//! ranges and data-file sizes, through the daemon's real path ([`Store::shuffle_segment`]:
//! file open, bounded read, parse, cache, range lookup), compared with a reference model.
//!
//! Input layout (what `fuzz/corpus/index_file/` files hold):
//! - byte 0: data file: `0` none, `1` exactly as long as the index says, `2` one byte short,
//!   `3` a `u16` length that follows the ranges (taken modulo 4);
//! - byte 1: number of reduce ranges (modulo 9), then that many `i32` BE `(start, end)`;
//! - the `u16` data length (mode 3 only);
//! - the rest: the index file's bytes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use super::{Input, assert_alloc_bounded, measure};
use crate::fixture::ExecutorDirs;
use crate::registry::{Executor, MemoryRegistry};
use crate::store::index::{Index, MAX_INDEX_FILE_BYTES};
use crate::store::{BlockFile, Error, Store};

/// Largest data file the check creates (sparse); longer ones are left missing.
const MAX_DATA_FILE_BYTES: u64 = 1 << 40;

struct Fixture {
    store: Store,
    dirs: ExecutorDirs,
    executor: Arc<Executor>,
}

/// One store with one registered executor per process, under the temp dir.
fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            // A static is never dropped, so the directory outlives the process: those of
            // processes that have ended are removed here instead.
            remove_dirs_of_ended_processes();
            let root: PathBuf =
                std::env::temp_dir().join(format!("{FIXTURE_DIR_PREFIX}{}", std::process::id()));
            std::fs::create_dir_all(&root).ok()?;
            let root = std::fs::canonicalize(&root).ok()?;
            let registry = Arc::new(MemoryRegistry::new());
            let store = Store::new(registry, std::slice::from_ref(&root), 1 << 20, 16).ok()?;
            let dirs = ExecutorDirs::create(&root, "fuzz", 1, 4).ok()?;
            let executor = store
                .register("app-fuzz", "0", &dirs.as_strings(), 4, "sort")
                .ok()?;
            Some(Fixture {
                store,
                dirs,
                executor,
            })
        })
        .as_ref()
}

/// Name of the per-process fixture directory under the temp dir, before the process id.
const FIXTURE_DIR_PREFIX: &str = "kshuffle-fuzz-index-";

/// Removes the fixture directories left in the temp dir by processes that no longer run.
fn remove_dirs_of_ended_processes() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(FIXTURE_DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The reference model of a valid index file: whole `i64`s, at least two, first 0, none
/// negative, none smaller than the one before.
fn model_offsets(bytes: &[u8]) -> Option<Vec<u64>> {
    if !bytes.len().is_multiple_of(8) || bytes.len() < 16 {
        return None;
    }
    let offsets: Vec<i64> = bytes
        .chunks(8)
        .map(|c| c.iter().fold(0i64, |acc, b| (acc << 8) | i64::from(*b)))
        .collect();
    let ok = offsets.first() == Some(&0)
        && offsets.iter().all(|o| *o >= 0)
        && offsets.windows(2).all(|w| w[0] <= w[1]);
    ok.then(|| offsets.iter().map(|o| o.unsigned_abs()).collect())
}

/// What the store must answer for partitions `start..end`: `Ok((offset, len))` or the
/// error's kind.
fn model_range(
    offsets: Option<&[u64]>,
    data_len: Option<u64>,
    start: i32,
    end: i32,
) -> Result<(u64, u64), &'static str> {
    let Some(offsets) = offsets else {
        return Err("index_corrupt");
    };
    let partitions = offsets.len() - 1;
    let (Ok(s), Ok(e)) = (usize::try_from(start), usize::try_from(end)) else {
        return Err("reduce_out_of_range");
    };
    if s >= e || e > partitions {
        return Err("reduce_out_of_range");
    }
    let (from, to) = (offsets[s], offsets[e]);
    match data_len {
        None if from == to => Ok((0, 0)),
        None => Err("data_missing"),
        Some(len) if len < to => Err("data_truncated"),
        Some(_) => Ok((from, to - from)),
    }
}

/// Index files: the parser agrees with the model (valid iff valid, same offsets), its
/// allocation is bounded by the file's size, and every segment the store hands out lies
/// inside the data file it opened (never an over-read) at exactly the model's offsets.
///
/// # Panics
/// When an invariant is broken, or the fixture cannot be created (the temp dir is not
/// writable).
pub fn check_index_file(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8() % 4;
    let ranges: Vec<(i32, i32)> = (0..input.u8() % 9)
        .map(|_| (input.u32() as i32, input.u32() as i32))
        .collect();
    let short_len = u64::from(input.u16());
    let index_bytes = input.rest();

    // The parser alone, against the model.
    let model = model_offsets(index_bytes);
    let (parsed, peak) = measure(|| Index::parse(index_bytes));
    assert_alloc_bounded("index parse", peak, index_bytes.len(), 1);
    match (&parsed, &model) {
        (Ok(got), Some(want)) => assert_eq!(&got[..], &want[..], "offsets differ from the file"),
        (Err(_), None) => {}
        (got, want) => panic!("parser says {got:?}, model says {want:?}"),
    }

    // The daemon's path, through real files.
    let fixture = fixture().expect("a writable temp dir for the index fixture");
    static MAP_ID: AtomicI64 = AtomicI64::new(0);
    let map_id = MAP_ID.fetch_add(1, Ordering::Relaxed);
    let index_file = BlockFile::ShuffleIndex {
        shuffle_id: 0,
        map_id,
    };
    let data_file = BlockFile::ShuffleData {
        shuffle_id: 0,
        map_id,
    };
    let index_path = fixture.dirs.path(&index_file).expect("index path");
    let data_path = fixture.dirs.path(&data_file).expect("data path");
    std::fs::write(&index_path, index_bytes).expect("write the index file");
    let last = model.as_ref().and_then(|o| o.last().copied()).unwrap_or(0);
    let wanted_len = match mode {
        0 => None,
        1 => Some(last),
        2 => Some(last.saturating_sub(1)),
        _ => Some(short_len),
    };
    let data_len = wanted_len
        .filter(|len| *len <= MAX_DATA_FILE_BYTES)
        .and_then(|len| {
            let file = std::fs::File::create(&data_path).ok()?;
            file.set_len(len).ok()?;
            Some(len)
        });
    let too_big = index_bytes.len() as u64 > MAX_INDEX_FILE_BYTES;

    for (start, end) in ranges {
        let (got, peak) = measure(|| {
            fixture
                .store
                .shuffle_segment(&fixture.executor, 0, map_id, start, end)
        });
        assert_alloc_bounded("index read", peak, index_bytes.len(), 3);
        let want = if too_big {
            Err("index_corrupt")
        } else {
            model_range(model.as_deref(), data_len, start, end)
        };
        match (got, want) {
            (Ok(segment), Ok((offset, len))) => {
                assert_eq!(
                    (segment.offset, segment.len),
                    (offset, len),
                    "{start}..{end}"
                );
                let file_len = segment.file.metadata().map(|m| m.len()).unwrap_or(0);
                assert!(
                    segment.offset + segment.len <= file_len,
                    "segment {}+{} past the end of its {file_len}-byte file",
                    segment.offset,
                    segment.len
                );
            }
            (Err(e), Err(kind)) => assert_eq!(e.kind(), kind, "{start}..{end}: {e}"),
            (got, want) => panic!(
                "{start}..{end}: store says {:?}, model says {want:?}",
                got.map(|s| (s.offset, s.len))
                    .map_err(|e: Error| e.to_string())
            ),
        }
    }
    // RemoveBlocks' path: deletes both files and drops the cache entry, so the cache (and
    // its hash table) does not grow from one input to the next and the allocation measured
    // above is this input's alone.
    let removed = fixture
        .store
        .remove_files(&fixture.executor, &[index_file.name(), data_file.name()]);
    assert_eq!(
        removed,
        1 + usize::from(data_len.is_some()),
        "RemoveBlocks count"
    );
}
