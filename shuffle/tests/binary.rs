//! The `kshuffled` binary as a user runs it: flags, the "listening" and "stopped" events,
//! clean exit on SIGTERM, usage errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Daemon, TestCertificate};
use kshuffle::client::{Client, Error as ClientError};
use kshuffle::fixture::ExecutorDirs;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

#[tokio::test]
async fn serves_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    // A root that does not exist yet is created.
    let root = tmp.path().join("not/yet/there");
    let daemon = Daemon::start(Daemon::standard_args(&root));
    assert!(root.is_dir());

    let dirs = ExecutorDirs::create(&root, "e", 1, 64).unwrap();
    dirs.write_map_output(0, 7, &[b"hello", b"world"]).unwrap();
    register_and_read_world(daemon.addr(), &dirs).await;

    let stats = daemon.stop();
    assert_eq!(stats.registrations, 1, "{stats}");
    assert_eq!(stats.chunks_served, 1, "{stats}");
    assert_eq!(stats.chunk_bytes, 5, "{stats}");
}

/// A daemon whose log pipe lost its reader (a log shipper that died, `kshuffled | head`)
/// serves on and still stops on SIGTERM: every line it logs fails with `EPIPE` and is
/// dropped, and the task that logged it (a connection's, the signal handler's) lives on.
/// (tracing-subscriber reported such a failure with `eprintln!`, which panics on a closed
/// stderr: the signal handler died logging "shutting down", and the daemon never exited.)
#[tokio::test]
async fn a_log_pipe_nobody_reads_stops_neither_serving_nor_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mut child = Command::new(Daemon::bin())
        .args(Daemon::standard_args(&root))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() {
        line.clear();
        let n = std::io::BufRead::read_line(&mut log, &mut line).unwrap();
        assert!(n > 0, "kshuffled exited before logging \"listening\"");
        addr = common::Event::parse(&line)
            .filter(|e| e.message == "listening")
            .and_then(|e| e.str_field("addr"))
            .map(|a| a.parse::<std::net::SocketAddr>().unwrap());
    }
    // The only reader goes: from here every write to the log fails.
    drop(log);

    let dirs = ExecutorDirs::create(&root, "e", 1, 64).unwrap();
    dirs.write_map_output(0, 7, &[b"hello", b"world"]).unwrap();
    for _ in 0..2 {
        // Each registration is logged, by the connection's task.
        register_and_read_world(addr.unwrap(), &dirs).await;
    }

    common::signal(&child.id().to_string(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("kshuffled did not exit within 30 s of SIGTERM with its log pipe closed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "kshuffled exited with {status}");
}

/// Registers `dirs` as executor "1" of `app-1` on a new connection to `addr` and reads the
/// block [`second_block_of_map_7`] (written as `[b"hello", b"world"]`).
async fn register_and_read_world(addr: std::net::SocketAddr, dirs: &ExecutorDirs) {
    let mut client = Client::connect(addr).await.unwrap();
    client
        .register("app-1", "1", dirs.as_strings(), 64)
        .await
        .unwrap();
    let handle = client.open(&second_block_of_map_7()).await.unwrap();
    assert_eq!(
        client.chunk(handle.stream_id, 0).await.unwrap(),
        &b"world"[..]
    );
}

/// Executor "1" of `app-1`: partition 1 of map output 7 of shuffle 0.
fn second_block_of_map_7() -> kshuffle::wire::Message {
    kshuffle::wire::Message::FetchShuffleBlocks {
        app_id: "app-1".into(),
        exec_id: "1".into(),
        shuffle_id: 0,
        map_ids: vec![7],
        reduce_ids: vec![vec![1]],
        batch_fetch_enabled: false,
    }
}

#[test]
fn bad_flags_exit_with_usage_status() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    let made = TestCertificate::create(tmp.path(), &["localhost"]);
    let (cert, key) = (
        made.cert.display().to_string(),
        made.key.display().to_string(),
    );
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
        // TLS needs both files, and files that hold a certificate and its key.
        (
            vec!["--allowed-root", &root, "--tls-cert-file", &cert],
            "--tls-key-file",
        ),
        (
            vec![
                "--allowed-root",
                &root,
                "--tls-cert-file",
                &key,
                "--tls-key-file",
                &key,
            ],
            "no usable PEM certificate",
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

/// A TLS client trusting only the certificate in `cert` (PEM).
async fn tls_client(addr: std::net::SocketAddr, cert: &Path) -> Result<Client, ClientError> {
    let trusted = CertificateDer::from_pem_file(cert).unwrap();
    let config = kshuffle::tls::client_config([trusted]).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    Client::connect_tls(addr, Arc::new(config), name).await
}

/// `--tls-cert-file`/`--tls-key-file`: the daemon serves TLS (`tls=true` in its listening
/// line) and only TLS; when the files are replaced by a renewed certificate, new connections
/// get it within `--tls-reload-interval`, without a restart, while a connection made
/// before goes on.
#[tokio::test]
async fn tls_is_served_and_a_renewed_certificate_is_picked_up_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let certs = tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let TestCertificate { cert, key, .. } = TestCertificate::create(&certs, &["localhost"]);
    let old = tmp.path().join("old.crt");
    std::fs::copy(&cert, &old).unwrap();
    let mut args = Daemon::standard_args(&root);
    args.extend(
        [
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-reload-interval",
            "100ms",
        ]
        .map(Into::into),
    );
    let daemon = Daemon::start(args);
    let listening = daemon
        .events()
        .into_iter()
        .find(|e| e.message == "listening")
        .unwrap();
    assert_eq!(
        listening.fields.get("tls"),
        Some(&serde_json::Value::Bool(true))
    );

    let dirs = ExecutorDirs::create(&root, "e", 1, 64).unwrap();
    dirs.write_map_output(0, 7, &[b"over", b"tls"]).unwrap();
    let mut first = tls_client(daemon.addr(), &old).await.unwrap();
    first
        .register("app-1", "1", dirs.as_strings(), 64)
        .await
        .unwrap();
    // In the clear, refused.
    let mut plain = Client::connect(daemon.addr()).await.unwrap();
    assert!(
        plain
            .register("app-1", "2", dirs.as_strings(), 64)
            .await
            .is_err()
    );

    // Renewal: new files in place (as the kubelet swaps a Secret's files).
    let renewed = TestCertificate::create(&tmp.path().join("renewed"), &["localhost"]);
    std::fs::rename(&renewed.key, &key).unwrap();
    std::fs::rename(&renewed.cert, &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tls_client(daemon.addr(), &cert).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the renewed certificate was not served: {e}"),
        }
    }
    // Clients that trust only the old one now fail; the connection made before goes on.
    let stale = tls_client(daemon.addr(), &old).await.unwrap_err();
    assert!(matches!(stale, ClientError::Tls(_)), "{stale}");
    let handle = first.open(&second_block_of_map_7()).await.unwrap();
    assert_eq!(first.chunk(handle.stream_id, 0).await.unwrap(), &b"tls"[..]);
    drop((first, plain));

    let log = daemon.log_text();
    assert!(
        log.contains("serving certificate reloaded"),
        "no reload logged:\n{log}"
    );
    assert!(
        log.contains("this daemon requires TLS"),
        "the client in the clear was not named:\n{log}"
    );
    let stats = daemon.stop();
    assert_eq!(stats.registrations, 1, "{stats}");
    // The first client's and the renewed one's; the others failed theirs.
    assert_eq!(stats.counter("tls_handshakes"), 2, "{stats}");
}
