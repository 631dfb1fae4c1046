//! A checked big-endian cursor over a byte slice.
//!
//! Every read checks the bytes that remain first and returns [`Error::Truncated`],
//! [`Error::NegativeLength`] or [`Error::InvalidUtf8`] instead of panicking. Array readers
//! check `count × minimum element size` against the remaining bytes before allocating, so a
//! huge count in a short message costs nothing (Spark 4.x rules, §1.3).

use super::Error;

/// Bytes of an `i32`.
const I32_BYTES: usize = 4;
/// Bytes of an `i64`.
const I64_BYTES: usize = 8;

/// A read position in a borrowed byte slice.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

// === impl Reader ===

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { rest: buf }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The bytes not read yet, without consuming them.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(self.truncated(what, n)),
        }
    }

    /// The next `N` bytes as an array.
    pub(crate) fn take_array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], Error> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(*head)
            }
            None => Err(self.truncated(what, N)),
        }
    }

    /// A `Truncated` error for a field of `needed` bytes at the current position.
    pub(crate) fn truncated(&self, what: &'static str, needed: usize) -> Error {
        Error::Truncated {
            what,
            needed,
            remaining: self.remaining(),
        }
    }

    /// One unsigned byte.
    pub(crate) fn get_u8(&mut self, what: &'static str) -> Result<u8, Error> {
        self.take_array::<1>(what).map(|[b]| b)
    }

    /// A boolean: one byte, non-zero is true (as Netty's `readBoolean`).
    pub(crate) fn get_bool(&mut self, what: &'static str) -> Result<bool, Error> {
        self.get_u8(what).map(|b| b != 0)
    }

    /// A big-endian `i32`.
    pub(crate) fn get_i32(&mut self, what: &'static str) -> Result<i32, Error> {
        self.take_array(what).map(i32::from_be_bytes)
    }

    /// A big-endian `i64`.
    pub(crate) fn get_i64(&mut self, what: &'static str) -> Result<i64, Error> {
        self.take_array(what).map(i64::from_be_bytes)
    }

    /// An `i32` length or count that must not be negative.
    pub(crate) fn get_len(&mut self, what: &'static str) -> Result<usize, Error> {
        let len = self.get_i32(what)?;
        usize::try_from(len).map_err(|_| Error::NegativeLength { what, len })
    }

    /// A count of elements of at least `min_elem_bytes` each, checked against the remaining
    /// bytes so that allocating `count` elements is bounded by the input size.
    pub(crate) fn get_count(
        &mut self,
        what: &'static str,
        min_elem_bytes: usize,
    ) -> Result<usize, Error> {
        let count = self.get_len(what)?;
        let needed = count.saturating_mul(min_elem_bytes);
        if needed > self.remaining() {
            return Err(self.truncated(what, needed));
        }
        Ok(count)
    }

    /// A `byte[]`: `i32` length then the bytes.
    pub(crate) fn get_bytes(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let len = self.get_len(what)?;
        self.take(len, what)
    }

    /// A String: `i32` byte length then UTF-8.
    pub(crate) fn get_string(&mut self, what: &'static str) -> Result<String, Error> {
        let bytes = self.get_bytes(what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| Error::InvalidUtf8 { what })
    }

    /// A `String[]`: `i32` count then that many Strings.
    pub(crate) fn get_string_array(&mut self, what: &'static str) -> Result<Vec<String>, Error> {
        let count = self.get_count(what, I32_BYTES)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(self.get_string(what)?);
        }
        Ok(out)
    }

    /// An `int[]`: `i32` count then that many `i32`.
    pub(crate) fn get_i32_array(&mut self, what: &'static str) -> Result<Vec<i32>, Error> {
        let count = self.get_count(what, I32_BYTES)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(self.get_i32(what)?);
        }
        Ok(out)
    }

    /// A `long[]`: `i32` count then that many `i64`.
    pub(crate) fn get_i64_array(&mut self, what: &'static str) -> Result<Vec<i64>, Error> {
        let count = self.get_count(what, I64_BYTES)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(self.get_i64(what)?);
        }
        Ok(out)
    }

    /// An `int[][]`: `i32` outer count then that many `int[]`.
    pub(crate) fn get_i32_array_array(
        &mut self,
        what: &'static str,
    ) -> Result<Vec<Vec<i32>>, Error> {
        let count = self.get_count(what, I32_BYTES)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(self.get_i32_array(what)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn primitives_are_big_endian() {
        let buf = [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 3, 7];
        let mut r = Reader::new(&buf);
        assert_eq!(r.get_u8("a").unwrap(), 1);
        assert_eq!(r.get_i32("b").unwrap(), 2);
        assert_eq!(r.get_i64("c").unwrap(), 0x0103);
        assert!(r.get_bool("d").unwrap());
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn truncated_reads_report_sizes_and_do_not_advance() {
        let mut r = Reader::new(&[0, 0, 1]);
        assert_eq!(
            r.get_i32("x"),
            Err(Error::Truncated {
                what: "x",
                needed: 4,
                remaining: 3
            })
        );
        assert_eq!(r.remaining(), 3);
        assert_eq!(
            r.get_i64("y"),
            Err(Error::Truncated {
                what: "y",
                needed: 8,
                remaining: 3
            })
        );
    }

    #[test]
    fn string_with_length_beyond_input_is_truncated() {
        let mut r = Reader::new(&[0, 0, 0, 5, b'a', b'b']);
        assert_eq!(
            r.get_string("s"),
            Err(Error::Truncated {
                what: "s",
                needed: 5,
                remaining: 2
            })
        );
    }

    #[test]
    fn negative_lengths_are_refused() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(
            r.get_bytes("b"),
            Err(Error::NegativeLength { what: "b", len: -2 })
        );
        let mut r = Reader::new(&[0x80, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(
            r.get_i32_array("a"),
            Err(Error::NegativeLength {
                what: "a",
                len: i32::MIN
            })
        );
    }

    #[test]
    fn huge_counts_with_few_bytes_fail_before_allocating() {
        let buf = [0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        for res in [
            Reader::new(&buf).get_string_array("s").map(|_| ()),
            Reader::new(&buf).get_i32_array("i").map(|_| ()),
            Reader::new(&buf).get_i64_array("l").map(|_| ()),
            Reader::new(&buf).get_i32_array_array("ii").map(|_| ()),
        ] {
            assert!(
                matches!(res, Err(Error::Truncated { remaining: 4, .. })),
                "{res:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let mut r = Reader::new(&[0, 0, 0, 2, 0xc3, 0x28]);
        assert_eq!(r.get_string("s"), Err(Error::InvalidUtf8 { what: "s" }));
    }

    #[test]
    fn empty_string_and_arrays() {
        let buf = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut r = Reader::new(&buf);
        assert_eq!(r.get_string("s").unwrap(), "");
        assert!(r.get_string_array("a").unwrap().is_empty());
        assert!(r.get_i64_array("l").unwrap().is_empty());
        assert_eq!(r.remaining(), 0);
    }
}
