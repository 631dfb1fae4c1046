//! Live interop with Spark's own client classes: `interop/SparkAuthInterop.java` runs the
//! real `AuthEngine` client and `SparkSaslClient` (plus the JDK's DIGEST-MD5 client) from the
//! jars of the pyspark installs that `scripts/spark-venv.sh` makes, against our
//! [`ServerAuth`], over its stdin/stdout.
//!
//! Jars: `$KSHUFFLE_SPARK_JARS` (one `pyspark/jars` directory), else every
//! `~/.cache/kshuffle/pyspark-*/lib/python3*/site-packages/pyspark/jars`. Without jars or
//! `javac` the tests print why and pass, except under CI (`CI` set), where they fail.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;

use super::super::message::SaslMessage;
use super::super::*;
use super::{hex, unhex};

const HELPER_SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/auth/interop/SparkAuthInterop.java"
);
const HELPER_CLASS: &str = "org.apache.spark.network.crypto.SparkAuthInterop";

/// One compiled helper per Spark install: (label, jars directory, classes directory).
struct Spark {
    label: String,
    jars: PathBuf,
    classes: tempfile::TempDir,
}

fn spark_installs() -> Vec<Spark> {
    let mut jar_dirs = Vec::new();
    if let Some(dir) = std::env::var_os("KSHUFFLE_SPARK_JARS") {
        jar_dirs.push(PathBuf::from(dir));
    } else if let Some(home) = std::env::var_os("HOME") {
        let cache = Path::new(&home).join(".cache/kshuffle");
        for venv in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
            let lib = venv.path().join("lib");
            for py in std::fs::read_dir(&lib).into_iter().flatten().flatten() {
                let jars = py.path().join("site-packages/pyspark/jars");
                if jars.is_dir() {
                    jar_dirs.push(jars);
                }
            }
        }
    }
    jar_dirs.sort();
    let mut installs = Vec::new();
    for jars in jar_dirs {
        let classes = tempfile::tempdir().unwrap();
        let status = Command::new("javac")
            .arg("-J-XX:TieredStopAtLevel=1")
            .arg("-d")
            .arg(classes.path())
            .arg("-cp")
            .arg(jars.join("*"))
            .arg(HELPER_SOURCE)
            .status();
        match status {
            Ok(s) if s.success() => installs.push(Spark {
                label: jars.display().to_string(),
                jars,
                classes,
            }),
            other => eprintln!("javac failed for {}: {other:?}", jars.display()),
        }
    }
    if installs.is_empty() {
        let msg = "no Spark jars or no javac: run scripts/spark-venv.sh (needs Java 17)";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipped: {msg}");
    }
    installs
}

/// A running helper.
struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    fn start(spark: &Spark, args: &[&str]) -> Helper {
        let mut cp = spark.classes.path().as_os_str().to_owned();
        cp.push(":");
        cp.push(spark.jars.join("*"));
        let mut child = Command::new("java")
            // Short-lived JVMs: the C1 compiler alone starts about twice as fast.
            .arg("-XX:TieredStopAtLevel=1")
            // The native library commons-crypto unpacks goes away with the classes.
            .arg(format!(
                "-Djava.io.tmpdir={}",
                spark.classes.path().display()
            ))
            .arg("-cp")
            .arg(cp)
            .arg(HELPER_CLASS)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Helper {
            child,
            stdin,
            stdout,
        }
    }

    /// The next protocol line: ("HEX" | "OK" | "ERR", rest).
    fn line(&mut self) -> (String, String) {
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "helper exited"
            );
            let line = line.trim_end();
            if let Some((kind, rest)) = line.split_once(' ')
                && matches!(kind, "HEX" | "OK" | "ERR")
            {
                return (kind.to_owned(), rest.to_owned());
            }
            if matches!(line, "HEX" | "OK" | "ERR") {
                return (line.to_owned(), String::new());
            }
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        match self.line() {
            (kind, rest) if kind == "HEX" => unhex(&rest),
            other => panic!("expected bytes from the Spark client, got {other:?}"),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        writeln!(self.stdin, "{}", hex(bytes)).unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shared(secret: &str) -> Arc<dyn SecretSource> {
    Arc::new(StaticSecrets::shared(Secret::from(secret)))
}

fn auth_engine_client_against_our_server(spark: &Spark) {
    for (version, n) in [(AuthEngineVersion::V1, "1"), (AuthEngineVersion::V2, "2")] {
        for (mode, name, class) in [
            (CipherMode::Ctr, "AES/CTR/NoPadding", "CtrTransportCipher"),
            (CipherMode::Gcm, "AES/GCM/NoPadding", "GcmTransportCipher"),
        ] {
            let ctx = format!("{} v{n} {name}", spark.label);
            let mut java =
                Helper::start(spark, &["auth-client", n, "spark-app-42", "s3cret", name]);
            let challenge = java.bytes();
            let mut auth = ServerAuth::new(shared("s3cret"), version, true).with_cipher(mode);
            let AuthStep::Done {
                reply,
                app_id,
                transport: Some(mut cipher),
            } = auth.step(&challenge, &mut fill_random).unwrap()
            else {
                panic!("{ctx}: expected Done with a cipher")
            };
            assert_eq!(app_id, "spark-app-42");
            java.send(&reply);
            // Spark accepted our response and installed its own cipher handlers.
            assert_eq!(java.line(), ("OK".into(), class.into()), "{ctx}");
            // Client → server: three writes ("hello ", "world", 100 000 'x', which GCM splits
            // into segments) open with our cipher, fed in odd-sized pieces.
            let wire = java.bytes();
            let mut pending = bytes::BytesMut::new();
            let mut plain = bytes::BytesMut::new();
            for piece in wire.chunks(9_999) {
                pending.extend_from_slice(piece);
                cipher.open(&mut pending, &mut plain).unwrap();
            }
            let expected = [&b"hello world"[..], &[b'x'; 100_000]].concat();
            assert!(plain[..] == expected[..], "{ctx}");
            assert!(pending.is_empty());
            // Server → client: three writes, delivered together, decode with Spark's handlers.
            let mut down = bytes::BytesMut::new();
            for part in [&b"greetings "[..], b"from kshuffle", &[b'y'; 70_000]] {
                cipher.seal(part, &mut fill_random, &mut down).unwrap();
            }
            java.send(&down);
            let expected = format!("greetings from kshuffle{}", "y".repeat(70_000));
            assert!(java.line() == ("OK".into(), expected), "{ctx}");
        }
    }
}

fn auth_engine_client_with_wrong_secret_is_refused(spark: &Spark) {
    let mut java = Helper::start(
        spark,
        &["auth-client", "1", "app-1", "wrong", "AES/CTR/NoPadding"],
    );
    let challenge = java.bytes();
    let mut auth = ServerAuth::new(shared("right"), AuthEngineVersion::V1, true);
    let err = auth.step(&challenge, &mut fill_random).unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err:?}");
}

/// Runs Spark's SASL client against our server; returns the server's result and the
/// client's last line.
fn sasl_exchange(
    spark: &Spark,
    client_secret: &str,
    server_secret: &str,
    encrypt: &str,
) -> (Result<AuthStep, Error>, (String, String)) {
    let mut java = Helper::start(spark, &["sasl-client", "app-7", client_secret, encrypt]);
    let mut auth = ServerAuth::new(shared(server_secret), AuthEngineVersion::V1, true);
    loop {
        let token = match java.line() {
            (kind, rest) if kind == "HEX" => unhex(&rest),
            other => return (Err(Error::sasl("client stopped")), other),
        };
        let msg = SaslMessage {
            app_id: "app-7",
            token: &token,
        }
        .encode();
        match auth.step(&msg, &mut fill_random) {
            Ok(AuthStep::Continue(reply)) => java.send(&reply),
            Ok(done @ AuthStep::Done { .. }) => {
                let AuthStep::Done { reply, .. } = &done else {
                    unreachable!()
                };
                java.send(reply);
                // The client has nothing more to say after rspauth.
                let empty = java.bytes();
                assert!(empty.is_empty());
                return (Ok(done), java.line());
            }
            Err(e) => return (Err(e), ("".into(), "".into())),
        }
    }
}

fn sasl_client_against_our_server(spark: &Spark) {
    let long = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    for secret in ["secret", long] {
        let (result, last) = sasl_exchange(spark, secret, secret, "false");
        let Ok(AuthStep::Done {
            app_id, transport, ..
        }) = result
        else {
            panic!("{}: {result:?}", spark.label)
        };
        assert_eq!(app_id, "app-7");
        assert!(transport.is_none());
        assert_eq!(last, ("OK".into(), "complete qop=auth".into()));
    }
}

fn sasl_client_with_wrong_secret_is_refused(spark: &Spark) {
    let (result, _) = sasl_exchange(spark, "wrong", "right", "false");
    let err = result.unwrap_err();
    assert!(err.to_string().contains("mismatched response"), "{err}");
}

fn sasl_client_requiring_encryption_gives_up(spark: &Spark) {
    // spark.authenticate.enableSaslEncryption=true: the client asks for auth-conf only; we
    // offer auth only, so the JDK client stops before sending a response.
    let (result, last) = sasl_exchange(spark, "secret", "secret", "true");
    assert!(result.is_err());
    assert_eq!(last.0, "ERR", "{last:?}");
    assert!(last.1.contains("No common protection layer"), "{last:?}");
}

/// Our AuthEngine client against Spark's AuthEngine server side, both ciphers.
fn our_auth_engine_client_against_spark_server(spark: &Spark) {
    for (version, n) in [(AuthEngineVersion::V1, "1"), (AuthEngineVersion::V2, "2")] {
        for (mode, name) in [
            (CipherMode::Ctr, "AES/CTR/NoPadding"),
            (CipherMode::Gcm, "AES/GCM/NoPadding"),
        ] {
            let ctx = format!("{} v{n} {name}", spark.label);
            let mut java = Helper::start(spark, &["auth-server", n, "app-3", "s3cret", name]);
            let (client, challenge) =
                ClientAuth::challenge("app-3", Secret::from("s3cret"), version, &mut fill_random)
                    .unwrap();
            java.send(&challenge);
            let mut cipher = client.with_cipher(mode).finish(&java.bytes()).unwrap();
            let mut wire = bytes::BytesMut::new();
            cipher.seal(b"ping", &mut fill_random, &mut wire).unwrap();
            java.send(&wire);
            assert_eq!(java.line(), ("OK".into(), "ping".into()), "{ctx}");
            let mut down = bytes::BytesMut::from(&java.bytes()[..]);
            let mut plain = bytes::BytesMut::new();
            cipher.open(&mut down, &mut plain).unwrap();
            assert_eq!(&plain[..], b"pong", "{ctx}");
        }
    }
}

/// Our SASL client against Spark's SparkSaslServer (the JDK's DIGEST-MD5 server).
fn our_sasl_client_against_spark_server(spark: &Spark) {
    for always_encrypt in ["false", "true"] {
        let mut java = Helper::start(spark, &["sasl-server", "app-7", "secret", always_encrypt]);
        let (mut client, first) = SaslClient::start("app-7", &Secret::from("secret"));
        java.send(SaslMessage::decode(&first).unwrap().token);
        let challenge = java.bytes();
        let response = client.respond(&challenge, &mut fill_random);
        if always_encrypt == "true" {
            // spark.network.sasl.serverAlwaysEncrypt: the server offers auth-conf only.
            assert!(response.is_err(), "{}", spark.label);
            continue;
        }
        java.send(SaslMessage::decode(&response.unwrap()).unwrap().token);
        client.finish(&java.bytes()).unwrap();
        assert_eq!(java.line(), ("OK".into(), "complete qop=auth".into()));
    }
}

/// One test for all scenarios, so the helper is compiled once per Spark install.
#[test]
fn java_spark_auth_clients_against_our_server() {
    for spark in spark_installs() {
        auth_engine_client_against_our_server(&spark);
        auth_engine_client_with_wrong_secret_is_refused(&spark);
        sasl_client_against_our_server(&spark);
        sasl_client_with_wrong_secret_is_refused(&spark);
        sasl_client_requiring_encryption_gives_up(&spark);
        our_sasl_client_against_spark_server(&spark);
        our_auth_engine_client_against_spark_server(&spark);
    }
}
