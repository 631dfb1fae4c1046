//! Block ids: parse and Display are exact inverses in both directions; errors keep a bounded copy of the id.
//!
//! The invariants live in `kshuffle::fuzzing::check_block_id`, which `shuffle/tests/fuzz_regressions.rs`
//! also runs on the corpus and on `fuzz/regressions/block_id/` under stable Rust.
#![no_main]

use kshuffle::fuzzing::{self, CountingAlloc};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| fuzzing::check_block_id(data));
