//! Frame decoder: consumes one whole frame or nothing, never past the limit; re-encoding round-trips; allocation follows the bytes present.
//!
//! The invariants live in `kshuffle::fuzzing::check_frames`, which `shuffle/tests/fuzz_regressions.rs`
//! also runs on the corpus and on `fuzz/regressions/wire_decode/` under stable Rust.
#![no_main]

use kshuffle::fuzzing::{self, CountingAlloc};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| fuzzing::check_frames(data));
