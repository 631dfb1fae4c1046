use std::io::{Read, Seek, SeekFrom};

use super::*;
use crate::fixture::{ExecutorDirs, pseudo_random_bytes};
use crate::registry::MemoryRegistry;

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    store: Store,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap().join("root");
    std::fs::create_dir(&root).unwrap();
    let store = Store::new(
        Arc::new(MemoryRegistry::new()),
        std::slice::from_ref(&root),
        1 << 20,
    )
    .unwrap();
    Env {
        _tmp: tmp,
        root,
        store,
    }
}

fn read_segment(seg: &mut Segment) -> Vec<u8> {
    seg.file.seek(SeekFrom::Start(seg.offset)).unwrap();
    let mut out = Vec::new();
    (&seg.file).take(seg.len).read_to_end(&mut out).unwrap();
    out
}

fn register(env: &Env, dirs: &ExecutorDirs) -> Arc<Executor> {
    env.store
        .register(
            "app-1",
            "1",
            &dirs.as_strings(),
            dirs.sub_dirs as i32,
            "sort",
        )
        .unwrap()
}

#[test]
fn serves_single_partitions_and_batch_ranges() {
    let env = env();
    let dirs = ExecutorDirs::create(&env.root, "a", 2, 64).unwrap();
    let parts: Vec<Vec<u8>> = (0..5)
        .map(|i| pseudo_random_bytes(i, (i as usize) * 100))
        .collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    dirs.write_map_output(3, 274, &refs).unwrap();
    let exec = register(&env, &dirs);

    for r in 0..5 {
        let mut seg = env.store.shuffle_segment(&exec, 3, 274, r, r + 1).unwrap();
        assert_eq!(read_segment(&mut seg), parts[r as usize], "partition {r}");
    }
    let mut batch = env.store.shuffle_segment(&exec, 3, 274, 1, 4).unwrap();
    assert_eq!(
        read_segment(&mut batch),
        [&parts[1][..], &parts[2], &parts[3]].concat()
    );

    for (s, e) in [(4, 6), (5, 6), (-1, 1), (2, 2), (3, 1)] {
        let err = env.store.shuffle_segment(&exec, 3, 274, s, e).unwrap_err();
        assert!(
            matches!(err, Error::ReduceOutOfRange { .. }),
            "{s}..{e}: {err}"
        );
    }
    let err = env.store.shuffle_segment(&exec, 3, 999, 0, 1).unwrap_err();
    assert!(matches!(err, Error::IndexMissing { .. }), "{err}");
    assert!(err.to_string().contains("shuffle_3_999_0.index"), "{err}");
}

#[test]
fn missing_truncated_and_absent_data_files() {
    let env = env();
    let dirs = ExecutorDirs::create(&env.root, "a", 1, 8).unwrap();
    dirs.write_map_output(0, 1, &[b"abc", b"", b"defg"])
        .unwrap();
    let exec = register(&env, &dirs);
    let data = dirs
        .path(&BlockFile::ShuffleData {
            shuffle_id: 0,
            map_id: 1,
        })
        .unwrap();

    // No data file: an empty partition is still an empty block, others fail clearly.
    std::fs::remove_file(&data).unwrap();
    assert_eq!(env.store.shuffle_segment(&exec, 0, 1, 1, 2).unwrap().len, 0);
    let err = env.store.shuffle_segment(&exec, 0, 1, 0, 1).unwrap_err();
    assert!(matches!(err, Error::DataMissing { .. }), "{err}");

    // Data shorter than its index says.
    std::fs::write(&data, b"abcde").unwrap();
    let err = env.store.shuffle_segment(&exec, 0, 1, 2, 3).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DataTruncated {
                need: 7,
                len: 5,
                ..
            }
        ),
        "{err}"
    );

    // Rewritten map output (same name, new content): the cached index is not reused.
    dirs.write_map_output(0, 1, &[b"xyzxyz", b"q"]).unwrap();
    let mut seg = env.store.shuffle_segment(&exec, 0, 1, 1, 2).unwrap();
    assert_eq!(read_segment(&mut seg), b"q");

    // Corrupt index.
    let index = dirs
        .path(&BlockFile::ShuffleIndex {
            shuffle_id: 0,
            map_id: 1,
        })
        .unwrap();
    std::fs::write(&index, [0u8; 12]).unwrap();
    std::fs::write(&data, b"new").unwrap();
    let err = env.store.shuffle_segment(&exec, 0, 1, 0, 1).unwrap_err();
    assert!(matches!(err, Error::IndexCorrupt { .. }), "{err}");
}

#[test]
fn rdd_blocks() {
    let env = env();
    let dirs = ExecutorDirs::create(&env.root, "a", 2, 64).unwrap();
    dirs.write_rdd_block(3, 4, b"cached partition").unwrap();
    let exec = register(&env, &dirs);
    let mut seg = env.store.rdd_segment(&exec, 3, 4).unwrap();
    assert_eq!(read_segment(&mut seg), b"cached partition");
    assert!(matches!(
        env.store.rdd_segment(&exec, 3, 5),
        Err(Error::DataMissing { .. })
    ));
}

#[test]
fn registration_is_confined_to_roots() {
    let env = env();
    let inside = ExecutorDirs::create(&env.root, "ok", 1, 64).unwrap();
    let outside_root = env.root.parent().unwrap().join("elsewhere");
    let outside = ExecutorDirs::create(&outside_root, "x", 1, 64).unwrap();
    let s = |d: &ExecutorDirs| d.as_strings();

    assert!(env.store.register("a", "1", &s(&inside), 64, "m").is_ok());
    let err = env
        .store
        .register("a", "2", &s(&outside), 64, "m")
        .unwrap_err();
    assert!(matches!(err, Error::LocalDirOutsideRoots { .. }), "{err}");
    // `..` and symlinks are resolved before the check.
    let dotdot = format!("{}/../elsewhere/blockmgr-x-0", env.root.display());
    let err = env
        .store
        .register("a", "3", &[dotdot], 64, "m")
        .unwrap_err();
    assert!(matches!(err, Error::LocalDirOutsideRoots { .. }), "{err}");
    let link = env.root.join("blockmgr-link");
    std::os::unix::fs::symlink(&outside.dirs[0], &link).unwrap();
    let err = env
        .store
        .register("a", "4", &[link.display().to_string()], 64, "m")
        .unwrap_err();
    assert!(matches!(err, Error::LocalDirOutsideRoots { .. }), "{err}");
    // The root itself is not an executor dir.
    let err = env
        .store
        .register("a", "5", &[env.root.display().to_string()], 64, "m")
        .unwrap_err();
    assert!(matches!(err, Error::LocalDirOutsideRoots { .. }), "{err}");

    for (dirs, sub, what) in [
        (vec![], 64, "no dirs"),
        (vec!["relative/dir".to_owned()], 64, "relative"),
        (
            vec![format!("{}/missing", env.root.display())],
            64,
            "missing",
        ),
        (s(&inside), 0, "zero sub-dirs"),
        (s(&inside), -3, "negative sub-dirs"),
    ] {
        let err = env.store.register("a", "6", &dirs, sub, "m").unwrap_err();
        assert!(
            matches!(err, Error::InvalidRegistration { .. }),
            "{what}: {err}"
        );
    }
    assert!(env.store.register("", "1", &s(&inside), 64, "m").is_err());
    assert!(env.store.register("a", "\n", &s(&inside), 64, "m").is_err());
    assert!(
        env.store
            .register(&"x".repeat(300), "1", &s(&inside), 64, "m")
            .is_err()
    );
    assert_eq!(env.store.registry().len(), 1);
}

#[test]
fn symlinks_planted_after_registration_are_not_followed() {
    let env = env();
    let victim = ExecutorDirs::create(&env.root, "victim", 1, 1).unwrap();
    victim.write_map_output(0, 1, &[b"secret"]).unwrap();
    let attacker = ExecutorDirs::create(&env.root, "attacker", 1, 1).unwrap();
    let exec = register(&env, &attacker);
    // The attacker replaces its hashed sub-dir with a link to the victim's.
    let sub = attacker.dirs[0].join("00");
    let _ = std::fs::remove_dir_all(&sub);
    std::os::unix::fs::symlink(victim.dirs[0].join("00"), &sub).unwrap();
    let err = env.store.shuffle_segment(&exec, 0, 1, 0, 1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DataUnreadable { .. } | Error::IndexUnreadable { .. }
        ),
        "{err}"
    );
    // Nor are they deleted through.
    let names = vec!["shuffle_0_1_0.data".to_owned()];
    assert_eq!(env.store.remove_files(&exec, &names), 0);
    assert!(
        victim
            .path(&BlockFile::ShuffleData {
                shuffle_id: 0,
                map_id: 1
            })
            .unwrap()
            .exists()
    );
}

#[test]
fn remove_files_counts_exactly_what_was_deleted() {
    let env = env();
    let dirs = ExecutorDirs::create(&env.root, "a", 2, 64).unwrap();
    dirs.write_map_output(0, 5, &[b"a", b"b"]).unwrap();
    dirs.write_rdd_block(1, 2, b"r").unwrap();
    let exec = register(&env, &dirs);
    // Served once, so its index is cached; removal must invalidate it.
    env.store.shuffle_segment(&exec, 0, 5, 0, 1).unwrap();
    let names: Vec<String> = [
        "shuffle_0_5_0.index",
        "shuffle_0_5_0.data",
        "rdd_1_2",
        "rdd_9_9",
        "../../etc/passwd",
        "shuffle_0_5_0.index",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(env.store.remove_files(&exec, &names), 3);
    let err = env.store.shuffle_segment(&exec, 0, 5, 0, 1).unwrap_err();
    assert!(matches!(err, Error::IndexMissing { .. }), "{err}");
}

#[test]
fn diagnose_corruption() {
    let env = env();
    let dirs = ExecutorDirs::create(&env.root, "a", 1, 64).unwrap();
    dirs.write_map_output(0, 5, &[b"hello", b"world"]).unwrap();
    let exec = register(&env, &dirs);
    let mut sum = Checksum::new(ChecksumAlgorithm::Adler32);
    sum.update(b"world");
    let good = sum.value();
    let d = |checksum, alg| env.store.diagnose(&exec, 0, 5, 1, checksum, alg);
    assert_eq!(d(good, "ADLER32"), CorruptionCause::ChecksumVerifyPass);
    assert_eq!(d(good + 1, "ADLER32"), CorruptionCause::NetworkIssue);
    assert_eq!(
        d(good, "MD5"),
        CorruptionCause::UnsupportedChecksumAlgorithm
    );
    assert_eq!(
        d(good, "CRC32"),
        CorruptionCause::UnknownIssue,
        "no CRC32 file"
    );
    // Flip a byte of partition 1 on disk.
    let data = dirs
        .path(&BlockFile::ShuffleData {
            shuffle_id: 0,
            map_id: 5,
        })
        .unwrap();
    std::fs::write(&data, b"helloWorld").unwrap();
    assert_eq!(d(good, "ADLER32"), CorruptionCause::DiskIssue);
    assert_eq!(
        env.store.diagnose(&exec, 0, 5, 7, good, "ADLER32"),
        CorruptionCause::UnknownIssue
    );
}
