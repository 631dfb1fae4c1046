//! The invariant checks behind the cargo-fuzz targets in `fuzz/`, shared with the stable test
//! that replays `fuzz/regressions/` and `fuzz/corpus/` (`tests/fuzz_regressions.rs`), so the
//! two cannot drift. Not part of the daemon's API.
//!
//! Each `check_*` function takes the raw fuzzer input, runs one parser on it and panics (an
//! `assert!`) when an invariant is broken: a round trip that does not return the input, a
//! read past what was given, an allocation that grows with a length the input declared
//! rather than with the bytes it holds, or (auth) success without the secret.
//!
//! Allocation is measured by [`CountingAlloc`], which the fuzz targets and the replay test
//! install as their global allocator. It counts per thread, so parallel tests do not disturb
//! each other; [`measure`] reports the peak of live bytes allocated while a closure ran.

mod alloc;
mod auth;
mod index;
mod tls;
mod wire;

pub use alloc::{CountingAlloc, counting_is_active, measure};
pub use auth::{AUTH_APP_ID, AUTH_SECRET, check_auth_handshake};
pub use index::check_index_file;
pub use tls::check_tls_records;
pub use wire::{check_block_id, check_frames, check_message};

/// Input of every target: what `fuzz/corpus/<target>/` files hold.
pub const TARGETS: [&str; 6] = [
    "wire_decode",
    "message_decode",
    "block_id",
    "index_file",
    "auth_handshake",
    "tls_records",
];

/// Runs the check of target `name` on `data`.
///
/// # Panics
/// When an invariant is broken, or `name` is not one of [`TARGETS`].
pub fn check(name: &str, data: &[u8]) {
    match name {
        "wire_decode" => check_frames(data),
        "message_decode" => check_message(data),
        "block_id" => check_block_id(data),
        "index_file" => check_index_file(data),
        "auth_handshake" => check_auth_handshake(data),
        "tls_records" => check_tls_records(data),
        other => panic!("no fuzz target named {other:?}"),
    }
}

/// Fixed allowance for allocations that do not depend on the input's size (small strings of
/// error messages, a few `Vec`s, HKDF/AES state).
pub const ALLOC_SLACK_BYTES: usize = 64 * 1024;

/// Asserts that `peak` bytes were at most `factor` times `input_len` plus
/// [`ALLOC_SLACK_BYTES`]: allocation follows the bytes present, not a declared length.
///
/// # Panics
/// When it was not.
pub fn assert_alloc_bounded(what: &str, peak: usize, input_len: usize, factor: usize) {
    let bound = input_len
        .saturating_mul(factor)
        .saturating_add(ALLOC_SLACK_BYTES);
    assert!(
        peak <= bound,
        "{what}: allocated {peak} bytes at peak for {input_len} input bytes (bound {bound})"
    );
}

/// A cursor that hands out pieces of the fuzzer's input, with defaults once it runs out (so
/// every input is a valid script).
#[derive(Debug)]
pub(crate) struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input(data)
    }

    pub(crate) fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    /// A piece prefixed by a big-endian `u16` length.
    pub(crate) fn piece(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}
