//! Real Spark (pyspark 4.3.0 and 3.5.9, `local-cluster`) against `kshuffled` with
//! `spark.authenticate` (SASL DIGEST-MD5, Spark's default, and AuthEngine + AES-CTR), and
//! across a daemon killed with SIGKILL in the middle of an application and restarted within
//! Spark's fetch-retry window; and Spark 4's RPC TLS (`spark.ssl.rpc.*`), alone and with
//! `spark.authenticate` inside it. The jobs are in `tests/spark/security_jobs.py`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Finished, SparkDirs, TestCertificate, run_with_timeout, spark_venv, tail};
use serde_json::Value;

const SESSION_TIMEOUT: Duration = Duration::from_secs(480);

fn dirs() -> SparkDirs {
    SparkDirs::create("kshuffle-spark-sec-", false)
}

fn python_cmd(version: &str, d: &SparkDirs, port: u16, session: &str) -> Command {
    let python = spark_venv(version).join("bin/python");
    d.python_command(&python, "security_jobs.py", session, port)
}

fn result_of(run: &Finished, daemon_log: &str) -> Value {
    run.stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "Spark session produced no result ({}).\nSpark stderr:\n{}\ndaemon log:\n{}",
                run.describe(),
                tail(&run.stderr, 80),
                tail(daemon_log, 40)
            )
        })
}

fn authenticate(version: &str) {
    let d = dirs();
    let secret_file = d.base.join("secret");
    std::fs::write(&secret_file, "kshuffle-e2e-secret\n").unwrap();
    let mut args = Daemon::standard_args(&d.allowed);
    args.extend([
        OsString::from("--auth-secret-file"),
        secret_file.into_os_string(),
    ]);
    let daemon = Daemon::start(args);
    let mut cmd = python_cmd(version, &d, daemon.port(), "auth");
    cmd.args([
        "--secret",
        "kshuffle-e2e-secret",
        "--wrong-secret",
        "--crypto",
    ]);
    let started = Instant::now();
    let run = run_with_timeout(&mut cmd, SESSION_TIMEOUT, None);
    let mut daemon = daemon;
    let log = daemon.log_text();
    let stats = daemon.try_stop().unwrap_or_else(|e| panic!("{e}"));
    let result = result_of(&run, &log);
    eprintln!(
        "pyspark {version} auth: {:.1}s, {result}, daemon: {stats}",
        started.elapsed().as_secs_f64()
    );

    assert_eq!(
        result["sasl"]["ok"],
        true,
        "SASL session failed: {result}\n{}",
        tail(&run.stderr, 60)
    );
    assert_eq!(
        result["auth_engine"]["ok"],
        true,
        "AuthEngine session failed: {result}\n{}",
        tail(&run.stderr, 60)
    );
    assert_eq!(
        result["wrong_secret"]["ok"], false,
        "a wrong secret was accepted: {result}"
    );
    assert!(
        log.contains("authentication failed"),
        "the daemon did not log the refused secret:\n{}",
        tail(&log, 40)
    );
    // Only the two sessions with the right secret registered executors and were served.
    assert!(stats.registrations >= 4, "{stats}");
    assert!(stats.chunks_served > 0, "{stats}");
}

#[test]
fn spark_4_3_authenticate() {
    authenticate("4.3.0");
}

#[test]
fn spark_3_5_authenticate() {
    authenticate("3.5.9");
}

/// Runs `keytool` (from `JAVA_HOME` if set) with `args`.
fn keytool(args: &[&OsStr]) {
    let keytool = std::env::var_os("JAVA_HOME")
        .map_or_else(|| "keytool".into(), |h| Path::new(&h).join("bin/keytool"));
    let made = Command::new(keytool).args(args).output().unwrap();
    assert!(made.status.success(), "keytool {args:?}: {made:?}");
}

/// Spark 4.3 with `spark.ssl.rpc.enabled` (which covers the shuffle client; 3.5 has no RPC
/// TLS) against the daemon serving TLS with `--tls-cert-file`; with `secret`, also
/// `spark.authenticate` and `spark.network.crypto.enabled`, the daemon with that secret.
/// Executors register and every fetch goes over TLS.
fn rpc_tls(secret: Option<&str>) {
    let d = dirs();
    // Spark's own RPC servers (driver, master, workers, executors) get a key made by
    // keytool; the daemon one made here, which Spark's clients trust through the same store.
    let keystore = d.base.join("rpc.p12");
    let store = keystore.as_os_str();
    let pass = OsStr::new("kshuffle");
    let [
        genkeypair,
        alias,
        keyalg,
        groupname,
        dname,
        validity,
        storetype,
        storepass,
        keypass,
    ] = [
        "-genkeypair",
        "-alias",
        "-keyalg",
        "-groupname",
        "-dname",
        "-validity",
        "-storetype",
        "-storepass",
        "-keypass",
    ]
    .map(OsStr::new);
    keytool(&[
        genkeypair,
        alias,
        "spark".as_ref(),
        keyalg,
        "EC".as_ref(),
        groupname,
        "secp256r1".as_ref(),
        dname,
        "CN=localhost".as_ref(),
        validity,
        "2".as_ref(),
        storetype,
        "PKCS12".as_ref(),
        storepass,
        pass,
        keypass,
        pass,
        "-keystore".as_ref(),
        store,
    ]);
    let TestCertificate { cert, key, .. } =
        TestCertificate::create(&d.base.join("kshuffle-tls"), &["localhost", "127.0.0.1"]);
    keytool(&[
        "-importcert".as_ref(),
        "-noprompt".as_ref(),
        alias,
        "kshuffle".as_ref(),
        "-file".as_ref(),
        cert.as_os_str(),
        storetype,
        "PKCS12".as_ref(),
        storepass,
        pass,
        "-keystore".as_ref(),
        store,
    ]);

    let mut args = Daemon::standard_args(&d.allowed);
    args.extend([
        OsString::from("--tls-cert-file"),
        cert.into_os_string(),
        OsString::from("--tls-key-file"),
        key.into_os_string(),
    ]);
    if let Some(secret) = secret {
        let secret_file = d.base.join("secret");
        std::fs::write(&secret_file, secret).unwrap();
        args.extend([
            OsString::from("--auth-secret-file"),
            secret_file.into_os_string(),
        ]);
    }
    let daemon = Daemon::start(args);
    let mut cmd = python_cmd("4.3.0", &d, daemon.port(), "tls");
    cmd.arg("--keystore")
        .arg(&keystore)
        .args(["--store-password", "kshuffle"]);
    if let Some(secret) = secret {
        cmd.args(["--secret", secret]);
    }
    let started = Instant::now();
    let run = run_with_timeout(&mut cmd, SESSION_TIMEOUT, None);
    let mut daemon = daemon;
    let log = daemon.log_text();
    let stats = daemon.try_stop().unwrap_or_else(|e| panic!("{e}"));
    let result = result_of(&run, &log);
    eprintln!(
        "pyspark 4.3.0 TLS: {:.1}s, {result}, daemon: {stats}",
        started.elapsed().as_secs_f64()
    );
    let name = if secret.is_some() { "tls_auth" } else { "tls" };
    assert_eq!(
        result[name]["ok"],
        true,
        "the TLS job failed: {result}\n{}\ndaemon log:\n{}",
        tail(&run.stderr, 60),
        tail(&log, 40)
    );
    // Every executor's registration and every fetch came over a TLS session.
    assert!(stats.registrations >= 2, "{stats}");
    assert!(stats.chunks_served > 0, "{stats}");
    assert!(
        stats.counter("tls_handshakes") >= stats.registrations,
        "{stats}"
    );
    // With the secret, they were authenticated and AES-encrypted (around TLS) as well.
    if secret.is_some() {
        assert!(
            stats.counter("encrypted_connections") >= stats.registrations,
            "{stats}"
        );
    }
    assert_eq!(
        stats.counter("connection_errors"),
        0,
        "{stats}\n{}",
        tail(&log, 40)
    );
}

#[test]
fn spark_4_3_rpc_tls() {
    rpc_tls(None);
}

#[test]
fn spark_4_3_rpc_tls_with_authenticate_and_crypto() {
    rpc_tls(Some("kshuffle-tls-secret"));
}

/// Waits for `path` to appear while `python` runs; the session's output if it ended first.
fn wait_for(path: &Path, limit: Duration, python: &std::thread::JoinHandle<Finished>) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !python.is_finished() {
        if path.exists() {
            return true;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
    false
}

fn restart(version: &str) {
    let d = dirs();
    let signal_dir = d.base.join("signals");
    std::fs::create_dir_all(&signal_dir).unwrap();
    let args = Daemon::standard_args(&d.allowed);
    let first = Daemon::start(args.clone());
    let port = first.port();
    let mut cmd = python_cmd(version, &d, port, "restart");
    cmd.arg("--signal-dir").arg(&signal_dir);
    let python = std::thread::spawn(move || run_with_timeout(&mut cmd, SESSION_TIMEOUT, None));

    if !wait_for(
        &signal_dir.join("phase1.done"),
        Duration::from_secs(300),
        &python,
    ) {
        let log = first.log_text();
        drop(first);
        let run = python.join().unwrap();
        panic!(
            "job 1 never finished ({}):\n{}\ndaemon log:\n{}",
            run.describe(),
            tail(&run.stderr, 60),
            tail(&log, 20)
        );
    }
    let first_log = first.log_text();
    common::signal(&first.pid().to_string(), "KILL");
    drop(first);
    std::fs::write(signal_dir.join("killed"), b"").unwrap();
    // Job 2 starts against a dead daemon; bring it back (same port, same state dir) within
    // the retry window (5 retries, 2 s apart).
    std::thread::park_timeout(Duration::from_secs(3));
    let mut again = args;
    let at = again.iter().position(|a| a == "--port").unwrap() + 1;
    again[at] = port.to_string().into();
    let second = Daemon::start(again);
    let run = python.join().unwrap();
    let mut second = second;
    let log = second.log_text();
    let stats = second.try_stop().unwrap_or_else(|e| panic!("{e}"));
    let result = result_of(&run, &log);
    eprintln!("pyspark {version} restart: {result}; restarted daemon: {stats}");

    assert_eq!(
        result["exact"],
        true,
        "wrong result after the restart: {result}\n{}",
        tail(&run.stderr, 60)
    );
    assert_eq!(
        result["records_mapped"], result["records"],
        "map output was recomputed: {result}"
    );
    assert_eq!(
        result["executors_before"], result["executors_after"],
        "executors were replaced: {result}"
    );
    assert_eq!(
        stats.registrations, 0,
        "Spark registered again (it never does): {stats}"
    );
    assert!(
        stats.chunks_served > 0,
        "the restarted daemon served nothing: {stats}\nfirst daemon:\n{}",
        tail(&first_log, 20)
    );
}

#[test]
fn spark_4_3_daemon_sigkill_and_restart() {
    restart("4.3.0");
}

#[test]
fn spark_3_5_daemon_sigkill_and_restart() {
    restart("3.5.9");
}
