//! Big-endian writers for Spark's primitive encodings (§1.3), shared by frames and messages.
//!
//! Length fields are `i32`. A value longer than `i32::MAX` bytes cannot be represented; such a
//! length is written saturated at `i32::MAX` (the peer then rejects the frame, as it would
//! reject any frame that large). Callers that can meet such sizes check first
//! ([`super::frame::try_encode`]).

use bytes::{BufMut, BytesMut};

/// `n` as an `i32` length field, saturated at `i32::MAX`.
pub(crate) fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Encoded size of a String or `byte[]` of `n` bytes.
pub(crate) fn prefixed_len(n: usize) -> usize {
    4usize.saturating_add(n)
}

/// A `byte[]`: `i32` length then the bytes.
pub(crate) fn put_bytes(dst: &mut BytesMut, b: &[u8]) {
    dst.put_i32(len_i32(b.len()));
    dst.put_slice(b);
}

/// A String: `i32` byte length then UTF-8.
pub(crate) fn put_string(dst: &mut BytesMut, s: &str) {
    put_bytes(dst, s.as_bytes());
}

/// A `String[]`.
pub(crate) fn put_string_array(dst: &mut BytesMut, items: &[String]) {
    dst.put_i32(len_i32(items.len()));
    for s in items {
        put_string(dst, s);
    }
}

/// An `int[]`.
pub(crate) fn put_i32_array(dst: &mut BytesMut, items: &[i32]) {
    dst.put_i32(len_i32(items.len()));
    for &v in items {
        dst.put_i32(v);
    }
}

/// A `long[]`.
pub(crate) fn put_i64_array(dst: &mut BytesMut, items: &[i64]) {
    dst.put_i32(len_i32(items.len()));
    for &v in items {
        dst.put_i64(v);
    }
}

/// An `int[][]`: outer count then each row as an `int[]`.
pub(crate) fn put_i32_array_array(dst: &mut BytesMut, rows: &[Vec<i32>]) {
    dst.put_i32(len_i32(rows.len()));
    for row in rows {
        put_i32_array(dst, row);
    }
}
