//! The checksums Spark writes beside shuffle data (`spark.shuffle.checksum.algorithm`), for
//! `DiagnoseCorruption`: Adler-32 (`java.util.zip.Adler32`), CRC-32 (`java.util.zip.CRC32`)
//! and CRC-32C (`java.util.zip.CRC32C`).

use super::layout::ChecksumAlgorithm;

/// A running checksum of one of Spark's algorithms.
#[derive(Debug, Clone)]
pub enum Checksum {
    /// Adler-32 state `(a, b)`.
    Adler32(u32, u32),
    /// CRC-32 (IEEE) state, pre-inverted.
    Crc32(u32),
    /// CRC-32C (Castagnoli) state, pre-inverted.
    Crc32c(u32),
}

const ADLER_MOD: u32 = 65521;
// Largest n such that 255 n (n + 1) / 2 + (n + 1) (MOD - 1) fits in u32.
const ADLER_NMAX: usize = 5552;

const fn crc_table(poly: u32) -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { poly ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32_TABLE: [u32; 256] = crc_table(0xEDB8_8320);
static CRC32C_TABLE: [u32; 256] = crc_table(0x82F6_3B78);

fn crc_update(table: &[u32; 256], mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

impl Checksum {
    /// A fresh checksum of `algorithm`.
    pub fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::Adler32 => Self::Adler32(1, 0),
            ChecksumAlgorithm::Crc32 => Self::Crc32(!0),
            ChecksumAlgorithm::Crc32c => Self::Crc32c(!0),
        }
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Adler32(a, b) => {
                for block in data.chunks(ADLER_NMAX) {
                    for &byte in block {
                        *a += u32::from(byte);
                        *b += *a;
                    }
                    *a %= ADLER_MOD;
                    *b %= ADLER_MOD;
                }
            }
            Self::Crc32(c) => *c = crc_update(&CRC32_TABLE, *c, data),
            Self::Crc32c(c) => *c = crc_update(&CRC32C_TABLE, *c, data),
        }
    }

    /// The value as Java's `Checksum.getValue()` returns it (widened to `i64`).
    pub fn value(&self) -> i64 {
        match *self {
            Self::Adler32(a, b) => i64::from((b << 16) | a),
            Self::Crc32(c) | Self::Crc32c(c) => i64::from(!c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(alg: ChecksumAlgorithm, data: &[u8]) -> i64 {
        let mut c = Checksum::new(alg);
        c.update(data);
        c.value()
    }

    #[test]
    fn known_values() {
        // Standard check values ("123456789") and Wikipedia's Adler-32 example.
        assert_eq!(of(ChecksumAlgorithm::Crc32, b"123456789"), 0xCBF4_3926);
        assert_eq!(of(ChecksumAlgorithm::Crc32c, b"123456789"), 0xE306_9283);
        assert_eq!(of(ChecksumAlgorithm::Adler32, b"Wikipedia"), 0x11E6_0398);
        assert_eq!(of(ChecksumAlgorithm::Adler32, b""), 1);
        assert_eq!(of(ChecksumAlgorithm::Crc32, b""), 0);
    }

    #[test]
    fn incremental_equals_whole_on_long_input() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for alg in [
            ChecksumAlgorithm::Adler32,
            ChecksumAlgorithm::Crc32,
            ChecksumAlgorithm::Crc32c,
        ] {
            let mut c = Checksum::new(alg);
            for part in data.chunks(777) {
                c.update(part);
            }
            assert_eq!(c.value(), of(alg, &data), "{alg:?}");
        }
        // Adler-32 over all-0xFF bytes exercises the deferred modulo at its worst case.
        let ff = vec![0xFFu8; 20_000];
        let (mut a, mut b) = (1u64, 0u64);
        for &x in &ff {
            a = (a + u64::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(of(ChecksumAlgorithm::Adler32, &ff), ((b << 16) | a) as i64);
    }
}
