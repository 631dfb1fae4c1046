//! Server side of spark.authenticate: arbitrary and mutated client messages never authenticate without the right secret; honest clients always do; state and memory bounded; no secret in error texts.
//!
//! The invariants live in `kshuffle::fuzzing::check_auth_handshake`, which `shuffle/tests/fuzz_regressions.rs`
//! also runs on the corpus and on `fuzz/regressions/auth_handshake/` under stable Rust.
#![no_main]

use kshuffle::fuzzing::{self, CountingAlloc};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| fuzzing::check_auth_handshake(data));
