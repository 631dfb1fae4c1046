//! Spark's on-disk layout: which file a block lives in and where that file is.
//!
//! A file named `name` of an executor with local dirs `dirs` and `sub` sub-directories per
//! dir lives at `dirs[h % dirs.len()] / {:02x}((h / dirs.len()) % sub) / name`, where `h` is
//! the non-negative Java `String.hashCode` of `name` (protocol reference §4.1). File names are
//! built here from parsed numbers, never taken from the peer as paths.

use std::path::{Path, PathBuf};

/// Java's `String.hashCode`: `h = 31 * h + c` over the UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// Spark's `nonNegativeHash`: `abs(hash)`, with `i32::MIN` mapped to 0.
pub fn non_negative_hash(s: &str) -> u32 {
    let h = java_string_hash(s);
    if h == i32::MIN { 0 } else { h.unsigned_abs() }
}

/// The path of file `name` among `dirs` with `sub_dirs` hashed sub-directories each.
///
/// Returns `None` when `dirs` is empty or `sub_dirs` is 0 (never the case for a validated
/// registration).
pub fn locate(dirs: &[PathBuf], sub_dirs: u32, name: &str) -> Option<PathBuf> {
    if dirs.is_empty() || sub_dirs == 0 {
        return None;
    }
    let hash = non_negative_hash(name) as usize;
    let dir: &Path = dirs.get(hash % dirs.len())?;
    let sub = (hash / dirs.len()) % sub_dirs as usize;
    // One allocation of the final size: this runs for every map output a chunk is served
    // from (see `scripts/profile.sh`).
    let mut hex = [0u8; 16];
    let sub = lower_hex(sub, 2, &mut hex);
    let mut path = PathBuf::with_capacity(dir.as_os_str().len() + sub.len() + name.len() + 2);
    path.push(dir);
    path.push(sub);
    path.push(name);
    Some(path)
}

/// `value` in lower-case hex, zero-padded to at least `width` digits (`{:0width$x}`),
/// written at the end of `buf`.
fn lower_hex(mut value: usize, width: usize, buf: &mut [u8; 16]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut start = buf.len();
    while start > 0 && (value > 0 || buf.len() - start < width) {
        start -= 1;
        if let Some(slot) = buf.get_mut(start) {
            *slot = DIGITS.get(value % 16).copied().unwrap_or(b'0');
        }
        value /= 16;
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(buf.get(start..).unwrap_or_default()).unwrap_or_default()
}

/// Appends `value` in decimal (what `{value}` prints) without going through `fmt`.
fn push_decimal(out: &mut String, value: i64) {
    if value < 0 {
        out.push('-');
    }
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut v = value.unsigned_abs();
    loop {
        start -= 1;
        if let Some(slot) = digits.get_mut(start) {
            *slot = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || start == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(digits.get(start..).unwrap_or_default()).unwrap_or_default());
}

/// A file an executor writes that the daemon may serve or delete. Parsed strictly from the
/// names Spark uses (`RemoveBlocks` carries file names), so nothing else can be addressed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BlockFile {
    /// `shuffle_S_M_0.index`
    ShuffleIndex {
        /// Shuffle id.
        shuffle_id: i32,
        /// Map task attempt id.
        map_id: i64,
    },
    /// `shuffle_S_M_0.data`
    ShuffleData {
        /// Shuffle id.
        shuffle_id: i32,
        /// Map task attempt id.
        map_id: i64,
    },
    /// `shuffle_S_M_0.checksum.ALGO`
    ShuffleChecksum {
        /// Shuffle id.
        shuffle_id: i32,
        /// Map task attempt id.
        map_id: i64,
        /// Checksum algorithm name (`ADLER32`, `CRC32`, `CRC32C`).
        algorithm: ChecksumAlgorithm,
    },
    /// `rdd_R_P`
    Rdd {
        /// RDD id.
        rdd_id: i32,
        /// Partition index.
        split_index: i32,
    },
}

/// Checksum algorithms Spark writes shuffle checksum files with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    /// `ADLER32` (Spark's default).
    Adler32,
    /// `CRC32`.
    Crc32,
    /// `CRC32C` (Spark 4.x).
    Crc32c,
}

impl ChecksumAlgorithm {
    /// Parses Spark's algorithm name (exact, upper case).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ADLER32" => Some(Self::Adler32),
            "CRC32" => Some(Self::Crc32),
            "CRC32C" => Some(Self::Crc32c),
            _ => None,
        }
    }

    /// Spark's name of the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            Self::Adler32 => "ADLER32",
            Self::Crc32 => "CRC32",
            Self::Crc32c => "CRC32C",
        }
    }
}

impl BlockFile {
    /// Parses a file name as Spark writes it. `None` for anything else (temp files, paths,
    /// `..`, signs, leading `+`, overflow).
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(rest) = name.strip_prefix("rdd_") {
            let (rdd, split) = rest.split_once('_')?;
            return Some(Self::Rdd {
                rdd_id: number(rdd)?,
                split_index: number(split)?,
            });
        }
        let rest = name.strip_prefix("shuffle_")?;
        let (shuffle, rest) = rest.split_once('_')?;
        let (map, rest) = rest.split_once('_')?;
        let (shuffle_id, map_id) = (number(shuffle)?, number(map)?);
        let suffix = rest.strip_prefix("0.")?;
        match suffix {
            "index" => Some(Self::ShuffleIndex { shuffle_id, map_id }),
            "data" => Some(Self::ShuffleData { shuffle_id, map_id }),
            _ => {
                let algorithm = ChecksumAlgorithm::parse(suffix.strip_prefix("checksum.")?)?;
                Some(Self::ShuffleChecksum {
                    shuffle_id,
                    map_id,
                    algorithm,
                })
            }
        }
    }

    /// The file name (the inverse of [`BlockFile::parse`]).
    pub fn name(&self) -> String {
        let mut s = String::with_capacity(48);
        self.write_name(&mut s);
        s
    }

    /// Appends the file name to `out` (formats the numbers by hand: this runs for every map
    /// output a chunk is served from).
    pub fn write_name(&self, out: &mut String) {
        match self {
            Self::ShuffleIndex { shuffle_id, map_id }
            | Self::ShuffleData { shuffle_id, map_id }
            | Self::ShuffleChecksum {
                shuffle_id, map_id, ..
            } => {
                out.push_str("shuffle_");
                push_decimal(out, i64::from(*shuffle_id));
                out.push('_');
                push_decimal(out, *map_id);
                out.push_str(match self {
                    Self::ShuffleIndex { .. } => "_0.index",
                    Self::ShuffleData { .. } => "_0.data",
                    _ => "_0.checksum.",
                });
                if let Self::ShuffleChecksum { algorithm, .. } = self {
                    out.push_str(algorithm.name());
                }
            }
            Self::Rdd {
                rdd_id,
                split_index,
            } => {
                out.push_str("rdd_");
                push_decimal(out, i64::from(*rdd_id));
                out.push('_');
                push_decimal(out, i64::from(*split_index));
            }
        }
    }
}

/// A non-negative decimal number of ASCII digits only (Spark never writes signs).
fn number<T: std::str::FromStr + Default + PartialOrd>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| *n >= T::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> Vec<PathBuf> {
        vec!["/d1/blockmgr-a".into(), "/d2/blockmgr-b".into()]
    }

    #[test]
    fn hand_formatting_matches_fmt() {
        for v in [
            0i64,
            1,
            9,
            10,
            99,
            1000,
            -1,
            -42,
            i64::MAX,
            i64::MIN,
            i64::from(i32::MIN),
        ] {
            let mut s = String::new();
            push_decimal(&mut s, v);
            assert_eq!(s, v.to_string());
        }
        for v in [0usize, 1, 15, 16, 255, 256, 0xffff, 0x1_0000] {
            let mut buf = [0u8; 16];
            assert_eq!(lower_hex(v, 2, &mut buf), format!("{v:02x}"));
        }
        let files = [
            BlockFile::ShuffleIndex {
                shuffle_id: 12,
                map_id: 123_456_789_012,
            },
            BlockFile::ShuffleData {
                shuffle_id: 0,
                map_id: 5,
            },
            BlockFile::ShuffleChecksum {
                shuffle_id: 3,
                map_id: 7,
                algorithm: ChecksumAlgorithm::Crc32c,
            },
            BlockFile::Rdd {
                rdd_id: 3,
                split_index: 4,
            },
        ];
        let names = [
            "shuffle_12_123456789012_0.index",
            "shuffle_0_5_0.data",
            "shuffle_3_7_0.checksum.CRC32C",
            "rdd_3_4",
        ];
        for (file, name) in files.iter().zip(names) {
            assert_eq!(file.name(), name);
            assert_eq!(BlockFile::parse(name).as_ref(), Some(file));
        }
    }

    #[test]
    fn java_hash_matches_spark_vectors() {
        // Protocol reference, Appendix A.3 (computed by the real Java classes).
        assert_eq!(java_string_hash("shuffle_0_5_0.data"), 705928743);
        assert_eq!(java_string_hash("shuffle_0_5_0.index"), 413944309);
        assert_eq!(
            java_string_hash("shuffle_0_5_0.checksum.ADLER32"),
            2146860071
        );
        assert_eq!(java_string_hash("rdd_3_4"), 1054353883);
        assert_eq!(
            java_string_hash("shuffle_12_123456789012_0.index"),
            2083517033
        );
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(non_negative_hash("polygenelubricants"), 0);
        // Non-BMP characters hash as two UTF-16 units, as in Java.
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
    }

    #[test]
    fn locate_matches_spark_vectors() {
        let cases = [
            ("shuffle_0_5_0.data", "/d2/blockmgr-b/13/shuffle_0_5_0.data"),
            (
                "shuffle_0_5_0.index",
                "/d2/blockmgr-b/3a/shuffle_0_5_0.index",
            ),
            (
                "shuffle_0_5_0.checksum.ADLER32",
                "/d2/blockmgr-b/13/shuffle_0_5_0.checksum.ADLER32",
            ),
            ("rdd_3_4", "/d2/blockmgr-b/2d/rdd_3_4"),
            (
                "shuffle_12_123456789012_0.index",
                "/d2/blockmgr-b/34/shuffle_12_123456789012_0.index",
            ),
            ("polygenelubricants", "/d1/blockmgr-a/00/polygenelubricants"),
        ];
        for (name, want) in cases {
            assert_eq!(
                locate(&dirs(), 64, name).unwrap(),
                PathBuf::from(want),
                "{name}"
            );
        }
        // More than 256 sub-dirs: the hex name grows past two digits.
        let p = locate(&["/d".into()], 4096, "shuffle_0_5_0.data").unwrap();
        assert_eq!(
            p,
            PathBuf::from(format!("/d/{:02x}/shuffle_0_5_0.data", 705928743 % 4096))
        );
        assert!(locate(&[], 64, "x").is_none());
        assert!(locate(&dirs(), 0, "x").is_none());
    }

    #[test]
    fn block_file_names_round_trip() {
        for name in [
            "shuffle_0_5_0.index",
            "shuffle_3_274_0.data",
            "shuffle_1_9223372036854775807_0.checksum.ADLER32",
            "shuffle_1_2_0.checksum.CRC32",
            "shuffle_1_2_0.checksum.CRC32C",
            "rdd_3_4",
        ] {
            let f = BlockFile::parse(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(f.name(), name);
        }
    }

    #[test]
    fn block_file_rejects_everything_else() {
        for name in [
            "",
            ".",
            "..",
            "../shuffle_0_5_0.index",
            "shuffle_0_5_0.index/..",
            "shuffle_0_5_1.index",
            "shuffle_0_5_0.index.tmp",
            "shuffle_0_5_0.data.1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            "shuffle_-1_5_0.data",
            "shuffle_+1_5_0.data",
            "shuffle_1_5_0.checksum.MD5",
            "shuffle_99999999999_5_0.data",
            "shuffle_1_99999999999999999999_0.data",
            "rdd_1",
            "rdd_1_2_3",
            "rdd_1_x",
            "rdd_1_2\0",
            "broadcast_0",
            "temp_shuffle_1b4e28ba",
        ] {
            assert_eq!(BlockFile::parse(name), None, "{name:?}");
        }
    }
}
