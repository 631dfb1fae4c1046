//! Replays the fuzz corpus and every input a fuzzer ever crashed on through the same
//! invariant checks the cargo-fuzz targets run (`kshuffle::fuzzing`), on stable Rust under
//! the normal test command:
//! - `fuzz/regressions/<target>/*`: inputs that once broke an invariant (each was fixed);
//! - `fuzz/corpus/<target>/*`: the committed corpus, seeded from real Spark traffic
//!   (`fuzz/record-corpus.sh`).
//!
//! Allocation bounds are checked too: this test binary counts allocations like the fuzz
//! targets do.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kshuffle::fuzzing::{self, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted (none if the dir does not exist).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `target`'s check on every file of `kind`, naming the file that fails.
fn replay(kind: &str, target: &str) -> usize {
    let files = inputs(kind, target);
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| fuzzing::check(target, &data));
        assert!(
            outcome.is_ok(),
            "{target}: {} breaks an invariant (see the panic above)",
            file.display()
        );
    }
    files.len()
}

#[test]
fn allocation_is_counted() {
    assert!(fuzzing::counting_is_active());
    let ((), peak) = fuzzing::measure(|| {
        let v = std::hint::black_box(vec![0u8; 1 << 20]);
        drop(v);
    });
    assert!(peak >= 1 << 20, "a 1 MiB Vec measured as {peak} bytes");
    let outcome = std::panic::catch_unwind(|| {
        fuzzing::assert_alloc_bounded("test", 1 << 20, 1000, 2);
    });
    assert!(
        outcome.is_err(),
        "a 1 MiB peak for 1000 bytes passed the bound"
    );
}

#[test]
fn every_target_has_a_corpus_and_it_passes() {
    for target in fuzzing::TARGETS {
        let n = replay("corpus", target);
        assert!(
            n > 0,
            "fuzz/corpus/{target}/ is empty: run fuzz/record-corpus.sh"
        );
    }
}

#[test]
fn every_regression_input_passes() {
    for target in fuzzing::TARGETS {
        replay("regressions", target);
    }
}
