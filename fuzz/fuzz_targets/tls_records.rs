//! TLS layer of the shuffle port: arbitrary bytes, cut anywhere, as what a client opens a
//! session with; no plaintext without a handshake, no whole record left unread, allocation
//! bounded.
//!
//! The invariants live in `kshuffle::fuzzing::check_tls_records`, which `shuffle/tests/fuzz_regressions.rs`
//! also runs on the corpus and on `fuzz/regressions/tls_records/` under stable Rust.
#![no_main]

use kshuffle::fuzzing::{self, CountingAlloc};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| fuzzing::check_tls_records(data));
