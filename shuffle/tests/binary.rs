//! The `kshuffled` binary as a user runs it: flags, the "listening" and "stopped" events,
//! clean exit on SIGTERM, usage errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::Daemon;
use kshuffle::client::Client;
use kshuffle::fixture::ExecutorDirs;

#[tokio::test]
async fn serves_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    // A root that does not exist yet is created.
    let root = tmp.path().join("not/yet/there");
    let daemon = Daemon::start(Daemon::standard_args(&root));
    assert!(root.is_dir());

    let dirs = ExecutorDirs::create(&root, "e", 1, 64).unwrap();
    dirs.write_map_output(0, 7, &[b"hello", b"world"]).unwrap();
    let mut client = Client::connect(daemon.addr()).await.unwrap();
    client
        .register("app-1", "1", dirs.as_strings(), 64)
        .await
        .unwrap();
    let handle = client
        .open(&kshuffle::wire::Message::FetchShuffleBlocks {
            app_id: "app-1".into(),
            exec_id: "1".into(),
            shuffle_id: 0,
            map_ids: vec![7],
            reduce_ids: vec![vec![1]],
            batch_fetch_enabled: false,
        })
        .await
        .unwrap();
    assert_eq!(
        client.chunk(handle.stream_id, 0).await.unwrap(),
        &b"world"[..]
    );
    drop(client);

    let stats = daemon.stop();
    assert_eq!(stats.registrations, 1, "{stats}");
    assert_eq!(stats.chunks_served, 1, "{stats}");
    assert_eq!(stats.chunk_bytes, 5, "{stats}");
}

#[test]
fn bad_flags_exit_with_usage_status() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    for (args, needle) in [
        (vec!["--port", "7337"], "--allowed-root"),
        (vec!["--allowed-root", &root, "--port", "70000"], "--port"),
        (
            vec!["--allowed-root", &root, "--idle-timeout", "soon"],
            "--idle-timeout",
        ),
        (
            vec!["--allowed-root", &root, "--max-connections", "0"],
            "--max-connections",
        ),
        (
            vec!["--allowed-root", &root, "--log-format", "xml"],
            "--log-format",
        ),
        (
            vec![
                "--allowed-root",
                &root,
                "--tcp-congestion-control",
                "no-such-algorithm",
            ],
            "--tcp-congestion-control no-such-algorithm: No such file or directory (os error 2): not available in this kernel",
        ),
    ] {
        let out = Command::new(Daemon::bin()).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?} (EX_USAGE)\n{stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: message does not name {needle}:\n{stderr}"
        );
    }
}

/// A daemon that runs out of file descriptors while data files are kept open closes the
/// kept ones and serves on: its open-files limit is cut (soft and hard, `prlimit(2)` on the
/// running process) to what it holds plus 16, then it serves 100 map outputs in turn, each
/// data file kept open after its fetch (`--open-data-files 1024`).
#[tokio::test]
async fn out_of_descriptors_the_kept_data_files_give_way() {
    use rustix::process::{Pid, Resource, Rlimit, prlimit};

    const MAPS: i64 = 100;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mut args = Daemon::standard_args(&root);
    args.extend(["--open-data-files".into(), "1024".into()]);
    let daemon = Daemon::start(args);
    let dirs = ExecutorDirs::create(&root, "e", 1, 64).unwrap();
    let block = |map: i64| format!("block of map {map}").into_bytes();
    for map in 0..MAPS {
        dirs.write_map_output(0, map, &[&block(map)]).unwrap();
    }
    let mut client = Client::connect(daemon.addr()).await.unwrap();
    client
        .register("app-1", "1", dirs.as_strings(), 64)
        .await
        .unwrap();

    let in_use = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count() as u64;
    let limit = in_use + 16;
    let pid = Pid::from_raw(i32::try_from(daemon.pid()).unwrap());
    prlimit(
        pid,
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )
    .unwrap();

    for map in 0..MAPS {
        let handle = client
            .open(&kshuffle::wire::Message::FetchShuffleBlocks {
                app_id: "app-1".into(),
                exec_id: "1".into(),
                shuffle_id: 0,
                map_ids: vec![map],
                reduce_ids: vec![vec![0]],
                batch_fetch_enabled: false,
            })
            .await
            .unwrap_or_else(|e| panic!("map {map}: {e}\n{}", daemon.log_text()));
        let got = client
            .chunk(handle.stream_id, 0)
            .await
            .unwrap_or_else(|e| panic!("map {map}: {e}\n{}", daemon.log_text()));
        assert_eq!(got, block(map), "map {map}");
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count() as u64;
    assert!(fds <= limit, "{fds} descriptors open, limit {limit}");
    assert!(
        daemon
            .warnings()
            .iter()
            .any(|w| w.message.contains("out of file descriptors")),
        "no warning about shedding in\n{}",
        daemon.log_text()
    );
    drop(client);
    let stats = daemon.stop();
    assert_eq!(stats.chunks_served, MAPS as u64, "{stats}");
}

/// The congestion control the daemon sets on its connections is logged at start: the named
/// one, or nothing with `system`.
#[test]
fn the_tcp_congestion_control_in_use_is_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let chosen = |flag: Option<&str>| -> Option<String> {
        let mut args = Daemon::standard_args(&root);
        if let Some(flag) = flag {
            args.extend(["--tcp-congestion-control".into(), flag.into()]);
        }
        let daemon = Daemon::start(args);
        let event = daemon
            .events()
            .into_iter()
            .find(|e| e.message == "TCP congestion control of shuffle connections");
        daemon.stop();
        event.and_then(|e| e.str_field("algorithm"))
    };
    assert_eq!(chosen(Some("reno")).as_deref(), Some("reno"));
    assert_eq!(chosen(Some("system")), None);
}
