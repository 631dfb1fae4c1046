use super::*;

fn exec(app: &str, exec: &str) -> Arc<Executor> {
    Arc::new(Executor {
        app_id: app.into(),
        exec_id: exec.into(),
        local_dirs: vec![format!("/r/{app}/{exec}")],
        resolved_dirs: vec![format!("/r/{app}/{exec}").into()],
        sub_dirs_per_local_dir: 64,
        shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
    })
}

fn sorted_ids(reg: &impl Registry) -> Vec<(String, String)> {
    let mut ids: Vec<_> = reg
        .all()
        .iter()
        .map(|e| (e.app_id.0.clone(), e.exec_id.0.clone()))
        .collect();
    ids.sort();
    ids
}

fn journal_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

#[test]
fn survives_reopen_with_removals() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (reg, rec) = JournalRegistry::open(tmp.path()).unwrap();
        assert_eq!(rec, Recovery::default());
        reg.insert(exec("a", "1")).unwrap();
        reg.insert(exec("a", "2")).unwrap();
        reg.insert(exec("b", "1")).unwrap();
        reg.remove_app("a").unwrap();
        reg.insert(exec("c", "7")).unwrap();
        // Re-registration replaces.
        reg.insert(exec("b", "1")).unwrap();
    }
    let (reg, rec) = JournalRegistry::open(tmp.path()).unwrap();
    assert_eq!(
        sorted_ids(&reg),
        [("b".into(), "1".into()), ("c".into(), "7".into())]
    );
    assert_eq!((rec.records, rec.executors, rec.torn_tail), (6, 2, false));
    assert_eq!(*reg.get("c", "7").unwrap(), *exec("c", "7"));
}

#[test]
fn torn_tail_is_dropped_and_the_rest_kept() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
        reg.insert(exec("a", "1")).unwrap();
        reg.insert(exec("a", "2")).unwrap();
    }
    let path = journal_path(tmp.path());
    let full = std::fs::read(&path).unwrap();
    // Cut the last record at every possible point: the first record always survives.
    let last = encode(&Record::register(&exec("a", "2"))).unwrap().len();
    for cut in 1..last {
        std::fs::write(&path, &full[..full.len() - cut]).unwrap();
        let (reg, rec) = JournalRegistry::open(tmp.path()).unwrap();
        assert!(rec.torn_tail, "cut {cut}");
        assert!(rec.moved_aside.is_none(), "cut {cut}");
        assert_eq!(sorted_ids(&reg), [("a".into(), "1".into())], "cut {cut}");
        // The file was truncated to its valid part and accepts appends again.
        reg.insert(exec("z", "9")).unwrap();
        drop(reg);
        let (reg, rec) = JournalRegistry::open(tmp.path()).unwrap();
        assert!(!rec.torn_tail);
        assert_eq!(reg.len(), 2, "cut {cut}");
        std::fs::write(&path, &full).unwrap();
    }
    // A flipped bit in the last record is a torn write too.
    let mut flipped = full.clone();
    let n = flipped.len();
    flipped[n - 3] ^= 0x40;
    std::fs::write(&path, &flipped).unwrap();
    let (reg, rec) = JournalRegistry::open(tmp.path()).unwrap();
    assert!(rec.torn_tail);
    assert_eq!(reg.len(), 1);
}

#[test]
fn corruption_before_the_tail_is_moved_aside() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
        for i in 0..5 {
            reg.insert(exec("a", &i.to_string())).unwrap();
        }
    }
    let path = journal_path(tmp.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let one = encode(&Record::register(&exec("a", "0"))).unwrap().len();
    // Corrupt the payload of the third record.
    bytes[MAGIC.len() + 2 * one + 20] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let (reg, rec) = JournalRegistry::open(tmp.path()).unwrap();
    assert_eq!(reg.len(), 2, "records before the corruption are kept");
    let aside = rec.moved_aside.expect("moved aside");
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        bytes,
        "the corrupt file is kept as it was"
    );
    // The fresh journal holds exactly the recovered entries.
    drop(reg);
    let (reg, rec) = JournalRegistry::open(tmp.path()).unwrap();
    assert_eq!((reg.len(), rec.records, rec.moved_aside), (2, 2, None));

    // Not a journal at all.
    std::fs::write(&path, b"hello, world").unwrap();
    let (reg, rec) = JournalRegistry::open(tmp.path()).unwrap();
    assert!(rec.moved_aside.is_some());
    assert!(reg.is_empty());
}

#[test]
fn compacts_when_dead_records_dominate() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
    reg.insert(exec("keep", "1")).unwrap();
    for i in 0..1100 {
        let app = format!("gone-{i}");
        reg.insert(exec(&app, "1")).unwrap();
        reg.remove_app(&app).unwrap();
    }
    let records = reg.shared.lock().records;
    assert!(
        records < 1100,
        "journal was never compacted: {records} records"
    );
    drop(reg);
    let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
    assert_eq!(sorted_ids(&reg), [("keep".into(), "1".into())]);
}

#[test]
fn unusable_state_dir_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = JournalRegistry::open(&file.join("state")).unwrap_err();
    assert!(err.to_string().contains("state dir"), "{err}");
}

#[test]
fn failed_append_leaves_no_partial_record() {
    // /dev/full fails every write with ENOSPC: a stand-in for a full disk.
    if !Path::new("/dev/full").exists() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
    reg.insert(exec("a", "1")).unwrap();
    let good_len = std::fs::metadata(journal_path(tmp.path())).unwrap().len();
    {
        let mut journal = reg.shared.lock();
        journal.file = Arc::new(OpenOptions::new().append(true).open("/dev/full").unwrap());
    }
    let err = reg.insert(exec("a", "2")).unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(
        reg.get("a", "2").is_none(),
        "a refused registration must not be served"
    );
    assert_eq!(
        std::fs::metadata(journal_path(tmp.path())).unwrap().len(),
        good_len
    );
}

#[test]
fn concurrent_registrations_are_all_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
    let reg = Arc::new(reg);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let reg = Arc::clone(&reg);
            std::thread::spawn(move || {
                for i in 0..40 {
                    reg.insert(exec(&format!("app-{t}"), &i.to_string()))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    {
        let journal = reg.shared.lock();
        assert_eq!(journal.written, 640);
        assert_eq!(journal.synced, 640, "every acknowledged record was synced");
    }
    drop(reg);
    let (reopened, recovery) = JournalRegistry::open(tmp.path()).unwrap();
    assert_eq!(recovery.executors, 640);
    assert!(!recovery.torn_tail);
    assert!(reopened.get("app-15", "39").is_some());
}

#[test]
fn failed_sync_drops_the_unsynced_records_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
    reg.insert(exec("a", "1")).unwrap();
    let good_len = std::fs::metadata(journal_path(tmp.path())).unwrap().len();
    reg.shared.lock().fail_next_sync = true;
    let err = reg.insert(exec("a", "2")).unwrap_err();
    assert!(err.to_string().contains("injected fsync failure"), "{err}");
    assert!(
        reg.get("a", "2").is_none(),
        "an unsynced registration is not served"
    );
    goes_on_from_the_last_good_sync(reg, tmp.path(), good_len, ("a", "3"), &[("a", "1")]);
}

/// After a failed sync: the file is back at `good_len` (the unsynced records truncated
/// away), and the journal goes on: registration `next` is written after the good records
/// and synced, so a reopen finds `kept` and `next`, and no torn tail.
fn goes_on_from_the_last_good_sync(
    reg: impl std::borrow::Borrow<JournalRegistry>,
    dir: &Path,
    good_len: u64,
    next: (&str, &str),
    kept: &[(&str, &str)],
) {
    assert_eq!(
        std::fs::metadata(journal_path(dir)).unwrap().len(),
        good_len,
        "the file is back at the last good sync"
    );
    reg.borrow().insert(exec(next.0, next.1)).unwrap();
    drop(reg);
    let (reopened, recovery) = JournalRegistry::open(dir).unwrap();
    assert!(!recovery.torn_tail);
    let mut want: Vec<(String, String)> = kept
        .iter()
        .chain([&next])
        .map(|(a, e)| ((*a).to_owned(), (*e).to_owned()))
        .collect();
    want.sort();
    assert_eq!(sorted_ids(&reopened), want);
}

#[test]
fn a_failed_sync_drops_every_record_it_covered() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
    // The first sync (sequence 1) is held, so that nothing below can be synced on its own:
    // the syncer only starts the next sync once it is released, and that one covers both
    // the hand-written record and the insert.
    let (release, hold) = std::sync::mpsc::channel();
    reg.shared.lock().hold_next_sync = Some(hold);
    let kept = reg.begin_insert(exec("a", "kept")).unwrap();
    wait_until(&reg, "the first sync started", |j| j.syncing);
    // Another writer's record (sequence 2) is written but not yet synced when this insert's
    // sync fails: both are dropped from the file and remembered as lost, so that writer
    // gets an error too when it checks (see `append`), instead of an acknowledgement.
    let lost_bytes = encode(&Record::register(&exec("b", "2"))).unwrap();
    {
        let mut journal = reg.shared.lock();
        (&*journal.file).write_all(&lost_bytes).unwrap();
        journal.len += lost_bytes.len() as u64;
        journal.records += 1;
        journal.written += 1;
        journal.fail_next_sync = true;
    }
    // This insert is sequence 3.
    let refused = reg.begin_insert(exec("b", "3")).unwrap();
    release.send(()).unwrap();
    kept.durable_blocking().unwrap();
    assert!(refused.durable_blocking().is_err());
    let journal = reg.shared.lock();
    assert!(
        journal
            .lost
            .iter()
            .any(|(r, why)| r.contains(&2) && r.contains(&3) && why.contains("injected")),
        "{:?}",
        journal.lost
    );
    assert_eq!(journal.synced, 3);
    assert_eq!(journal.len, journal.synced_len);
    assert_eq!(
        std::fs::metadata(journal_path(tmp.path())).unwrap().len(),
        journal.len
    );
    drop(journal);
    assert_eq!(sorted_ids(&reg), [("a".to_owned(), "kept".to_owned())]);
}

/// Starts `n` threads that each insert one executor of app `app`, numbered from `first`.
fn insert_in_threads(
    reg: &Arc<JournalRegistry>,
    app: &'static str,
    first: usize,
    n: usize,
) -> Vec<std::thread::JoinHandle<Result<(), Error>>> {
    (first..first + n)
        .map(|i| {
            let reg = Arc::clone(reg);
            std::thread::spawn(move || reg.insert(exec(app, &i.to_string())))
        })
        .collect()
}

/// Waits (bounded) until `written` records are in the journal file.
fn wait_written(reg: &JournalRegistry, written: u64) {
    wait_until(reg, &format!("{written} records written"), |j| {
        j.written == written
    });
}

/// Waits (bounded) until `check` holds of the journal.
#[allow(
    clippy::disallowed_methods,
    reason = "plain threads blocked in the journal, no runtime"
)]
fn wait_until(reg: &JournalRegistry, what: &str, check: impl Fn(&Journal) -> bool) {
    for _ in 0..5000 {
        if check(&reg.shared.lock()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("never {what}");
}

#[test]
fn records_appended_during_a_sync_share_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
    let reg = Arc::new(reg);
    let (release, hold) = std::sync::mpsc::channel();
    reg.shared.lock().hold_next_sync = Some(hold);
    let leader = insert_in_threads(&reg, "a", 0, 1);
    wait_until(&reg, "the first sync started", |j| j.syncing);
    // While the first sync runs (held), six more writers append theirs and wait.
    let followers = insert_in_threads(&reg, "a", 1, 6);
    wait_written(&reg, 7);
    {
        let journal = reg.shared.lock();
        assert!(journal.syncing);
        assert_eq!((journal.synced, journal.syncs), (0, 0));
    }
    release.send(()).unwrap();
    for t in leader.into_iter().chain(followers) {
        t.join().unwrap().unwrap();
    }
    let journal = reg.shared.lock();
    assert_eq!(journal.synced, 7);
    assert_eq!(
        journal.syncs, 2,
        "the six appended during the first sync share one"
    );
    drop(journal);
    drop(reg);
    let (_, recovery) = JournalRegistry::open(tmp.path()).unwrap();
    assert_eq!(recovery.executors, 7);
}

#[test]
fn a_failed_sync_also_fails_the_records_appended_while_it_ran() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
    reg.insert(exec("a", "kept")).unwrap();
    let good_len = std::fs::metadata(journal_path(tmp.path())).unwrap().len();
    let reg = Arc::new(reg);
    let (release, hold) = std::sync::mpsc::channel();
    {
        let mut journal = reg.shared.lock();
        journal.hold_next_sync = Some(hold);
        journal.fail_next_sync = true;
    }
    let leader = insert_in_threads(&reg, "b", 0, 1);
    wait_written(&reg, 2);
    let followers = insert_in_threads(&reg, "b", 1, 3);
    wait_written(&reg, 5);
    release.send(()).unwrap();
    for t in leader.into_iter().chain(followers) {
        let err = t.join().unwrap().unwrap_err();
        assert!(
            err.to_string().contains("injected fsync failure")
                || err.to_string().contains("could not be synced"),
            "{err}"
        );
    }
    assert!(
        reg.executors_of("b").is_empty(),
        "nothing refused is served"
    );
    goes_on_from_the_last_good_sync(reg, tmp.path(), good_len, ("c", "1"), &[("a", "kept")]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_registration_is_served_once_durable_and_its_wait_holds_no_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
    let (release, hold) = std::sync::mpsc::channel();
    reg.shared.lock().hold_next_sync = Some(hold);
    let pending = reg.begin_insert(exec("a", "1")).unwrap();
    wait_until(&reg, "the sync started", |j| j.syncing);
    // The sync is held: written, not durable, so not served.
    let waiter = tokio::spawn(pending.durable());
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    assert!(
        reg.get("a", "1").is_none(),
        "not served before it is durable"
    );
    // This runtime's only thread is free meanwhile: another registration is written and
    // queued behind the held sync.
    let second = reg.begin_insert(exec("a", "2")).unwrap();
    assert_eq!(reg.shared.lock().written, 2);
    release.send(()).unwrap();
    waiter.await.unwrap().unwrap();
    assert!(reg.get("a", "1").is_some());
    second.durable().await.unwrap();
    assert!(reg.get("a", "2").is_some());
    assert_eq!(reg.shared.lock().syncs, 2);
}

#[test]
fn a_registration_written_before_drop_is_still_made_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
    let pending = reg.begin_insert(exec("a", "1")).unwrap();
    drop(reg);
    pending.durable_blocking().unwrap();
    let (reopened, recovery) = JournalRegistry::open(tmp.path()).unwrap();
    assert_eq!(recovery.executors, 1);
    assert!(reopened.get("a", "1").is_some());
}

#[test]
fn compaction_keeps_the_changes_not_yet_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = JournalRegistry::open(tmp.path()).unwrap();
    for i in 0..1100 {
        reg.insert(exec("old", &i.to_string())).unwrap();
    }
    reg.insert(exec("live", "1")).unwrap();
    // Drop "old" without compacting yet: its records are dead weight in the file.
    let seq = reg
        .shared
        .write(Change::RemoveApp(AppId::from("old")))
        .unwrap();
    reg.shared.pending(seq).durable_blocking().unwrap();
    // A registration written to the file (as `write` does) but not synced: the syncer is
    // not told, so compaction finds it unsynced, and must carry it into the new file.
    let late = Change::Register(exec("live", "2"));
    {
        let mut journal = reg.shared.lock();
        let bytes = encode(&late.record()).unwrap();
        (&*journal.file).write_all(&bytes).unwrap();
        journal.len += bytes.len() as u64;
        journal.records += 1;
        journal.written += 1;
        let seq = journal.written;
        journal.unsynced.push_back((seq, late));
    }
    reg.shared.maybe_compact().unwrap();
    {
        let journal = reg.shared.lock();
        assert_eq!(journal.records, 2, "compacted to the live entries");
        assert_eq!(journal.synced, journal.written, "all of it durable");
        assert!(journal.unsynced.is_empty());
    }
    assert!(reg.get("live", "2").is_some(), "the late change is applied");
    drop(reg);
    let (reopened, _) = JournalRegistry::open(tmp.path()).unwrap();
    assert_eq!(
        sorted_ids(&reopened),
        vec![("live".into(), "1".into()), ("live".into(), "2".into())]
    );
}
