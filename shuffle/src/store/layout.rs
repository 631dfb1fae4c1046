//! Spark's on-disk layout: which file a block lives in and where that file is.
//!
//! A file named `name` of an executor with local dirs `dirs` and `sub` sub-directories per
//! dir lives at `dirs[h % dirs.len()] / {:02x}((h / dirs.len()) % sub) / name`, where `h` is
//! the non-negative Java `String.hashCode` of `name` (protocol reference §4.1). File names are
//! built here from parsed numbers, never taken from the peer as paths.

use std::fmt::Write as _;
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
    let mut path = dir.to_path_buf();
    path.push(format!("{sub:02x}"));
    path.push(name);
    Some(path)
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
        let mut s = String::with_capacity(40);
        // Writing into a String cannot fail.
        let _ = match self {
            Self::ShuffleIndex { shuffle_id, map_id } => {
                write!(s, "shuffle_{shuffle_id}_{map_id}_0.index")
            }
            Self::ShuffleData { shuffle_id, map_id } => {
                write!(s, "shuffle_{shuffle_id}_{map_id}_0.data")
            }
            Self::ShuffleChecksum {
                shuffle_id,
                map_id,
                algorithm,
            } => {
                write!(
                    s,
                    "shuffle_{shuffle_id}_{map_id}_0.checksum.{}",
                    algorithm.name()
                )
            }
            Self::Rdd {
                rdd_id,
                split_index,
            } => write!(s, "rdd_{rdd_id}_{split_index}"),
        };
        s
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
