//! Index files: arbitrary bytes as an index file and arbitrary reduce ranges through the store's real read path, against a reference model: no segment past the data file's end, monotone offsets enforced, allocation bounded by the file.
//!
//! The invariants live in `kshuffle::fuzzing::check_index_file`, which `shuffle/tests/fuzz_regressions.rs`
//! also runs on the corpus and on `fuzz/regressions/index_file/` under stable Rust.
#![no_main]

use kshuffle::fuzzing::{self, CountingAlloc};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| fuzzing::check_index_file(data));
