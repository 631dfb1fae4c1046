//! Durability of registrations: the real binary killed with SIGKILL and restarted on the
//! same state dir serves every executor it knew, without Spark registering again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::Daemon;
use kshuffle::client::Client;
use kshuffle::fixture::{ExecutorDirs, pseudo_random_bytes};
use kshuffle::wire::Message;

fn fetch(app: &str, exec: &str) -> Message {
    Message::FetchShuffleBlocks {
        app_id: app.into(),
        exec_id: exec.into(),
        shuffle_id: 3,
        map_ids: vec![11],
        reduce_ids: vec![vec![0, 1]],
        batch_fetch_enabled: false,
    }
}

#[tokio::test]
async fn registrations_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let args = Daemon::standard_args(&root);
    let first = Daemon::start(args.clone());
    let parts = [pseudo_random_bytes(1, 1000), pseudo_random_bytes(2, 3000)];
    let mut expected = Vec::new();
    {
        let mut c = Client::connect(first.addr()).await.unwrap();
        for e in 0..20 {
            let dirs = ExecutorDirs::create(&root, &format!("e{e}"), 2, 64).unwrap();
            dirs.write_map_output(3, 11, &[&parts[0], &parts[1]])
                .unwrap();
            c.register("app-durable", &e.to_string(), dirs.as_strings(), 64)
                .await
                .unwrap();
            expected.push(e.to_string());
        }
    }
    // No graceful anything: the registrations must already be on disk.
    common::signal(&first.pid().to_string(), "KILL");
    drop(first);

    let second = Daemon::start(args);
    let mut c = Client::connect(second.addr()).await.unwrap();
    for exec in &expected {
        let h = c.open(&fetch("app-durable", exec)).await.unwrap();
        assert_eq!(
            c.chunk(h.stream_id, 0).await.unwrap(),
            parts[0],
            "executor {exec}"
        );
        assert_eq!(
            c.chunk(h.stream_id, 1).await.unwrap(),
            parts[1],
            "executor {exec}"
        );
    }
    drop(c);
    let stats = second.stop();
    assert_eq!(stats.registrations, 0, "nothing registered again: {stats}");
    assert_eq!(stats.chunks_served, 40, "{stats}");
}

#[test]
fn unusable_state_dir_stops_startup_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let root = tmp.path().join("root");
    for (state, needle) in [
        (file.join("state"), "--state-dir"),
        (root.join("inside"), "overlaps the allowed root"),
    ] {
        let out = Command::new(Daemon::bin())
            .args(["--port", "0", "--admin-port", "0", "--allowed-root"])
            .arg(&root)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{state:?}: {stderr}");
        assert!(stderr.contains(needle), "{state:?}: {stderr}");
    }
}
