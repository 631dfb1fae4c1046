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
        64,
    )
    .unwrap();
    Env {
        _tmp: tmp,
        root,
        store,
    }
}

fn read_segment(seg: &mut Segment) -> Vec<u8> {
    (&*seg.file).seek(SeekFrom::Start(seg.offset)).unwrap();
    let mut out = Vec::new();
    (&*seg.file).take(seg.len).read_to_end(&mut out).unwrap();
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
    // Served once, so its index is cached and its data file kept open; removal must drop
    // both (a kept descriptor would hold the deleted file's space).
    env.store.shuffle_segment(&exec, 0, 5, 0, 1).unwrap();
    assert_eq!(env.store.open_files().len(), 1);
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
    assert!(env.store.open_files().is_empty());
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

fn sweep_options() -> SweepOptions {
    SweepOptions {
        orphan_grace: std::time::Duration::from_secs(600),
        app_idle: Some(std::time::Duration::from_secs(86_400)),
        max_removals: 100,
        dry_run: false,
        max_depth: 4,
    }
}

fn later(secs: u64) -> std::time::SystemTime {
    std::time::SystemTime::now() + std::time::Duration::from_secs(secs)
}

#[test]
fn remove_app_deletes_exactly_its_dirs() {
    let env = env();
    let a = ExecutorDirs::create(&env.root.join("a"), "a", 2, 64).unwrap();
    let b = ExecutorDirs::create(&env.root.join("b"), "b", 1, 64).unwrap();
    a.write_map_output(0, 1, &[b"aaaa", b"bb"]).unwrap();
    b.write_map_output(0, 1, &[b"bbbb"]).unwrap();
    env.store
        .register("app-a", "1", &a.as_strings(), 64, "m")
        .unwrap();
    let exec_b = env
        .store
        .register("app-b", "1", &b.as_strings(), 64, "m")
        .unwrap();
    // A symlink inside app A's dir pointing at app B's files must not be followed.
    std::os::unix::fs::symlink(&b.dirs[0], a.dirs[0].join("evil")).unwrap();
    // Both served once: their data files are kept open.
    let exec_a = env.store.registry().get("app-a", "1").unwrap();
    env.store.shuffle_segment(&exec_a, 0, 1, 0, 1).unwrap();
    env.store.shuffle_segment(&exec_b, 0, 1, 0, 1).unwrap();
    assert_eq!(env.store.open_files().len(), 2);

    let removal = env.store.remove_app("app-a").unwrap().unwrap();
    assert_eq!(
        env.store.open_files().len(),
        1,
        "only app B's file stays open"
    );
    assert_eq!(removal.executors, 1);
    assert!(removal.errors.is_empty(), "{:?}", removal.errors);
    assert_eq!(
        removal.reclaimed.bytes,
        6 + 24 + 16,
        "data + index (3 offsets) + checksum bytes"
    );
    assert!(a.dirs.iter().all(|d| !d.exists()));
    assert!(env.store.registry().get("app-a", "1").is_none());
    // App B is untouched and still served.
    let mut seg = env.store.shuffle_segment(&exec_b, 0, 1, 0, 1).unwrap();
    assert_eq!(read_segment(&mut seg), b"bbbb");
    assert!(
        env.store.remove_app("app-a").unwrap().is_none(),
        "unknown app"
    );
}

#[test]
fn executor_gone_keeps_shuffle_output() {
    let env = env();
    let d = ExecutorDirs::create(&env.root, "e", 1, 64).unwrap();
    d.write_map_output(0, 1, &[b"x"]).unwrap();
    d.write_rdd_block(2, 3, b"rdd").unwrap();
    let sub = d.dirs[0].join("0c");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("temp_shuffle_1234"), b"spill").unwrap();
    let exec = env
        .store
        .register("app", "1", &d.as_strings(), 64, "m")
        .unwrap();

    let r = env.store.executor_gone("app", "1", true).unwrap();
    // The spill and the checksum file go; index, data and the RDD block stay.
    assert_eq!(r.files, 2, "{r:?}");
    assert!(env.store.shuffle_segment(&exec, 0, 1, 0, 1).is_ok());
    assert!(env.store.rdd_segment(&exec, 2, 3).is_ok());
    let r = env.store.executor_gone("app", "1", false).unwrap();
    assert_eq!(r.files, 1, "RDD block removed when not served");
    assert!(matches!(
        env.store.executor_gone("app", "9", true),
        Err(Error::UnknownExecutor { .. })
    ));
}

#[test]
fn sweep_reclaims_orphans_after_grace_and_leaves_live_apps() {
    let env = env();
    let live = ExecutorDirs::create(&env.root.join("spark-live"), "live", 1, 64).unwrap();
    live.write_map_output(0, 1, &[b"live"]).unwrap();
    env.store
        .register("live", "1", &live.as_strings(), 64, "m")
        .unwrap();
    let orphan =
        ExecutorDirs::create(&env.root.join("spark-dead/executor-1"), "dead", 1, 64).unwrap();
    orphan.write_map_output(0, 1, &[b"dead data"]).unwrap();

    // Within the grace period nothing is touched.
    let report = env.store.sweep(&sweep_options(), later(0));
    assert!(
        report.orphan_dirs.is_empty() && report.idle_apps.is_empty(),
        "{report:?}"
    );
    // A dry run after the grace period reports without deleting.
    let dry = SweepOptions {
        dry_run: true,
        ..sweep_options()
    };
    let report = env.store.sweep(&dry, later(3600));
    assert_eq!(report.orphan_dirs, orphan.dirs);
    assert!(orphan.dirs[0].exists());
    // The real sweep deletes the orphan only.
    let report = env.store.sweep(&sweep_options(), later(3600));
    assert_eq!(report.orphan_dirs, orphan.dirs);
    assert!(report.reclaimed.bytes >= 9);
    assert!(!orphan.dirs[0].exists());
    assert!(live.dirs[0].exists());
    assert!(report.idle_apps.is_empty());

    // After the idle period the live app is reclaimed too.
    let report = env.store.sweep(&sweep_options(), later(2 * 86_400));
    assert_eq!(report.idle_apps, ["live"]);
    assert!(!live.dirs[0].exists());
    assert!(env.store.registry().is_empty());
}

#[test]
fn sweep_is_rate_limited() {
    let env = env();
    for i in 0..5 {
        ExecutorDirs::create(&env.root, &format!("o{i}"), 1, 64).unwrap();
    }
    let options = SweepOptions {
        max_removals: 2,
        ..sweep_options()
    };
    let first = env.store.sweep(&options, later(3600));
    assert_eq!((first.orphan_dirs.len(), first.deferred), (2, 3));
    let second = env.store.sweep(&options, later(3600));
    assert_eq!((second.orphan_dirs.len(), second.deferred), (2, 1));
}

#[test]
fn registrations_outside_the_current_roots_are_not_served() {
    let env = env();
    let dirs = ExecutorDirs::create(&env.root, "a", 1, 64).unwrap();
    dirs.write_map_output(0, 1, &[b"x"]).unwrap();
    env.store
        .register("app", "1", &dirs.as_strings(), 64, "m")
        .unwrap();
    // The same registry, opened by a daemon whose only root is elsewhere.
    let other_root = env.root.parent().unwrap().join("other-root");
    std::fs::create_dir(&other_root).unwrap();
    let other = Store::new(Arc::clone(env.store.registry()), &[other_root], 1 << 20, 64).unwrap();
    assert!(matches!(
        other.executor("app", "1"),
        Err(Error::UnknownExecutor { .. })
    ));
    assert!(env.store.executor("app", "1").is_ok());
}
