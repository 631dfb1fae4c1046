//! The serialized size of one RoaringBitmap in the portable format (§2.4).
//!
//! Spark writes bitmaps back to back without a length prefix, so a decoder must walk each
//! bitmap's headers to find where it ends. Layout (RoaringFormatSpec, **little-endian**):
//! - `u32` cookie: `12346` then `u32` container count, or `12347 | (count - 1) << 16`
//!   followed by a run-flag bitset of `ceil(count / 8)` bytes;
//! - `count` × (`u16` key, `u16` cardinality − 1);
//! - `count` × `u32` offsets, present with cookie 12346 or when `count >= 4`;
//! - the containers: run (`u16` run count, then run count × 4 bytes), array (cardinality ≤
//!   4096: cardinality × 2 bytes) or bitmap (8192 bytes).
//!
//! Only sizes are checked; offsets, key order and container contents are not interpreted
//! (the bytes are kept raw). Nothing is allocated.

use super::Error;
use super::reader::Reader;

/// Cookie of a bitmap without run containers.
const SERIAL_COOKIE_NO_RUNCONTAINER: u32 = 12346;
/// Low 16 bits of the cookie of a bitmap with run containers.
const SERIAL_COOKIE: u32 = 12347;
/// With run containers, offsets are written only from this many containers on.
const NO_OFFSET_THRESHOLD: usize = 4;
/// At most one container per 16-bit key.
const MAX_CONTAINERS: usize = 1 << 16;
/// Largest cardinality stored as an array container.
const ARRAY_MAX_CARDINALITY: usize = 4096;
/// Size of a bitmap container.
const BITMAP_CONTAINER_BYTES: usize = 8192;
/// Bytes of one descriptive header entry and of one offset.
const HEADER_ENTRY_BYTES: usize = 4;
/// Bytes of one run (`u16` start, `u16` length − 1).
const RUN_BYTES: usize = 4;

/// Field name used in errors.
const WHAT: &str = "RoaringBitmap";

/// Bytes taken by the bitmap at the start of `buf`.
///
/// # Errors
///
/// [`Error::Malformed`] for an unknown cookie or too many containers, [`Error::Truncated`]
/// if `buf` ends inside the bitmap.
pub(crate) fn serialized_len(buf: &[u8]) -> Result<usize, Error> {
    let mut r = Reader::new(buf);
    let cookie = u32::from_le_bytes(r.take_array(WHAT)?);
    let (count, run_flags) = if cookie & 0xFFFF == SERIAL_COOKIE {
        let count = (cookie >> 16) as usize + 1;
        (count, Some(r.take(count.div_ceil(8), WHAT)?))
    } else if cookie == SERIAL_COOKIE_NO_RUNCONTAINER {
        let count = u32::from_le_bytes(r.take_array(WHAT)?) as usize;
        if count > MAX_CONTAINERS {
            return Err(Error::Malformed {
                what: WHAT,
                detail: format!("{count} containers (at most {MAX_CONTAINERS})"),
            });
        }
        (count, None)
    } else {
        return Err(Error::Malformed {
            what: WHAT,
            detail: format!("unknown cookie {cookie}"),
        });
    };
    let headers = r.take(count * HEADER_ENTRY_BYTES, WHAT)?;
    if run_flags.is_none() || count >= NO_OFFSET_THRESHOLD {
        r.take(count * HEADER_ENTRY_BYTES, WHAT)?;
    }
    for (i, header) in headers.chunks_exact(HEADER_ENTRY_BYTES).enumerate() {
        let is_run = run_flags
            .and_then(|flags| flags.get(i / 8))
            .is_some_and(|byte| byte >> (i % 8) & 1 == 1);
        let container_len = if is_run {
            usize::from(u16::from_le_bytes(r.take_array(WHAT)?)) * RUN_BYTES
        } else {
            let cardinality = match header {
                [_, _, lo, hi] => usize::from(u16::from_le_bytes([*lo, *hi])) + 1,
                _ => 0, // chunks_exact yields exactly HEADER_ENTRY_BYTES
            };
            if cardinality <= ARRAY_MAX_CARDINALITY {
                cardinality * 2
            } else {
                BITMAP_CONTAINER_BYTES
            }
        };
        r.take(container_len, WHAT)?;
    }
    Ok(buf.len() - r.remaining())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `{1, 2, 3, 1000}` as Spark writes it (Appendix A.1).
    const SMALL: [u8; 24] = [
        0x3a, 0x30, 0, 0, 1, 0, 0, 0, 0, 0, 3, 0, 16, 0, 0, 0, 1, 0, 2, 0, 3, 0, 0xe8, 0x03,
    ];

    #[test]
    fn array_container_without_runs() {
        assert_eq!(serialized_len(&SMALL), Ok(24));
        let mut longer = SMALL.to_vec();
        longer.extend_from_slice(&[9, 9, 9]);
        assert_eq!(serialized_len(&longer), Ok(24));
    }

    #[test]
    fn empty_bitmap_is_eight_bytes() {
        assert_eq!(serialized_len(&[0x3a, 0x30, 0, 0, 0, 0, 0, 0]), Ok(8));
    }

    #[test]
    fn run_container_without_offsets() {
        // cookie 12347, one container, run flag set, key 0 / cardinality-1 = 9,
        // one run: start 5, length-1 9 => {5..=14}.
        let bitmap = [0x3b, 0x30, 0, 0, 0x01, 0, 0, 9, 0, 1, 0, 5, 0, 9, 0];
        assert_eq!(serialized_len(&bitmap), Ok(bitmap.len()));
        assert!(matches!(
            serialized_len(&bitmap[..14]),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn mixed_containers_with_offsets() {
        // 4 containers (cookie 12347 | 3 << 16): run, array (2 values), bitmap, run (2 runs).
        let mut b = vec![0x3b, 0x30, 3, 0, 0b0000_1001];
        for (key, card_minus_1) in [(0u16, 0u16), (1, 1), (2, 5000), (3, 19)] {
            b.extend_from_slice(&key.to_le_bytes());
            b.extend_from_slice(&card_minus_1.to_le_bytes());
        }
        b.extend_from_slice(&[0; 16]); // offsets (not interpreted)
        b.extend_from_slice(&[1, 0, 7, 0, 0, 0]); // run container: {7}
        b.extend_from_slice(&[1, 0, 2, 0]); // array container: {1, 2}
        b.extend_from_slice(&[0xff; BITMAP_CONTAINER_BYTES]);
        b.extend_from_slice(&[2, 0, 0, 0, 9, 0, 20, 0, 9, 0]); // two runs
        assert_eq!(serialized_len(&b), Ok(b.len()));
        b.pop();
        assert!(matches!(serialized_len(&b), Err(Error::Truncated { .. })));
    }

    #[test]
    fn bad_cookie_and_huge_counts() {
        assert!(matches!(
            serialized_len(&[1, 2, 3, 4, 0, 0, 0, 0]),
            Err(Error::Malformed { .. })
        ));
        // 12346 with 2^32-1 containers.
        assert!(matches!(
            serialized_len(&[0x3a, 0x30, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            Err(Error::Malformed { .. })
        ));
        // 12346 with 65536 containers but no bytes for them.
        assert!(matches!(
            serialized_len(&[0x3a, 0x30, 0, 0, 0, 0, 1, 0]),
            Err(Error::Truncated {
                needed: 262_144,
                remaining: 0,
                ..
            })
        ));
        // 12347 with 65536 containers.
        assert!(matches!(
            serialized_len(&[0x3b, 0x30, 0xff, 0xff]),
            Err(Error::Truncated {
                needed: 8192,
                remaining: 0,
                ..
            })
        ));
        assert!(matches!(
            serialized_len(&[0x3a, 0x30]),
            Err(Error::Truncated { .. })
        ));
    }
}
