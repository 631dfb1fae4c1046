//! Block-transfer message decoder: a decoded message round-trips; allocation is a small multiple of the input.
//!
//! The invariants live in `kshuffle::fuzzing::check_message`, which `shuffle/tests/fuzz_regressions.rs`
//! also runs on the corpus and on `fuzz/regressions/message_decode/` under stable Rust.
#![no_main]

use kshuffle::fuzzing::{self, CountingAlloc};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| fuzzing::check_message(data));
