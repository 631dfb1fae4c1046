//! The services under test as child processes: `kshuffled` and Spark's own Java
//! `ExternalShuffleService`, each on its own port over the same root of shuffle files.
//!
//! Both are killed when their handle drops. The Java service is started exactly as the field
//! notes describe (`spark-class org.apache.spark.deploy.ExternalShuffleService` with
//! `SPARK_SHUFFLE_OPTS`); `spark-class` ends in `exec`, so the child's pid is the JVM's.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running service.
#[derive(Debug)]
pub struct Service {
    /// Short name for tables (`kshuffled`, `spark-4.3.0`).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The TCP congestion control it sets on its connections, as it logged it (`None`: it
    /// leaves the node's default, or it is not `kshuffled`).
    pub congestion: Option<String>,
    child: Child,
}

impl Service {
    /// Its process id (the one `/proc` figures are read from).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `kshuffled` at `binary`, confined to `root`, keeping its registrations in
    /// `state_dir`, on ports the OS picks, with `extra_args` after those, and waits for its
    /// `listening` event.
    ///
    /// # Errors
    /// When it cannot start or does not listen within `wait`.
    pub fn start_kshuffled(
        binary: &Path,
        root: &Path,
        state_dir: &Path,
        extra_args: &[String],
        wait: Duration,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state_dir)?;
        let mut child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", "0", "--log-format", "json"])
            .args(["--admin-bind", "127.0.0.1", "--admin-port", "0"])
            .args([
                "--log-level",
                "warn,kshuffle::server=info,kshuffle::daemon=info",
            ])
            .arg("--allowed-root")
            .arg(root)
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut congestion = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(CONGESTION_EVENT) {
                    congestion = field(&line, "algorithm");
                }
                if line.contains("\"listening\"") {
                    let _ = tx.send((field(&line, "addr"), congestion.take()));
                }
                // Keep draining so the daemon never blocks on a full pipe.
            }
        });
        let mut service = Self {
            name: "kshuffled".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            congestion: None,
            child,
        };
        match rx.recv_timeout(wait) {
            Ok((Some(addr), congestion)) => {
                service.addr = addr
                    .parse()
                    .with_context(|| format!("kshuffled logged `listening` at {addr}"))?;
                service.congestion = congestion;
            }
            Ok((None, _)) => bail!("kshuffled logged `listening` without an addr"),
            Err(_) => bail!("kshuffled did not log `listening` within {wait:?}"),
        }
        Ok(service)
    }

    /// Starts Spark's Java shuffle service from `spark_home` with `spark.local.dir` =
    /// `state_dir,root` (and the JVM options `extra_opts`, e.g. `-Dspark.ssl.rpc.*`) on a free
    /// port and waits until it accepts connections.
    ///
    /// # Errors
    /// When it cannot start or does not accept connections within `wait`.
    pub fn start_java(
        spark_home: &Path,
        name: &str,
        state_dir: &Path,
        root: &Path,
        log: &Path,
        extra_opts: &str,
        wait: Duration,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let opts = format!(
            "-Dspark.shuffle.service.port={port} -Dspark.local.dir={},{} {extra_opts}",
            state_dir.display(),
            root.display()
        );
        let log_file = std::fs::File::create(log)?;
        let child = Command::new(spark_home.join("bin/spark-class"))
            .arg("org.apache.spark.deploy.ExternalShuffleService")
            .env("SPARK_HOME", spark_home)
            .env("SPARK_SHUFFLE_OPTS", opts)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting the Java service from {}", spark_home.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut service = Self {
            name: name.into(),
            addr,
            congestion: None,
            child,
        };
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = service.child.try_wait()? {
                bail!("the Java service exited ({status}); see {}", log.display());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the Java service did not listen within {wait:?}; see {}",
                    log.display()
                );
            }
            // A short blocking pause between polls (no runtime here).
            let (_tx, rx) = mpsc::channel::<()>();
            let _ = rx.recv_timeout(Duration::from_millis(200));
        }
        Ok(service)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Picks a port that is free now (bind to 0, read, release).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The message of `kshuffled`'s event naming the congestion control of its connections.
const CONGESTION_EVENT: &str = "\"TCP congestion control of shuffle connections\"";

/// The string field `name` of a JSON log line, e.g. `"addr":"127.0.0.1:1234"` (no escapes
/// in the values looked for).
fn field(line: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":\"");
    let at = line.find(&key)? + key.len();
    let rest = line.get(at..)?;
    Some(rest.get(..rest.find('"')?)?.to_owned())
}

/// The pinned pyspark venv of `version`, installing it if needed with
/// `scripts/spark-venv.sh` from `workspace`.
///
/// # Errors
/// When the script fails.
pub fn spark_venv(workspace: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(workspace.join("scripts/spark-venv.sh"))
        .arg(version)
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/spark-venv.sh")?;
    if !out.status.success() {
        bail!("scripts/spark-venv.sh {version} failed");
    }
    Ok(PathBuf::from(
        String::from_utf8(out.stdout)?
            .lines()
            .last()
            .context("spark-venv.sh printed nothing")?,
    ))
}

/// `SPARK_HOME` of the pinned pyspark venv of `version` (see [`spark_venv`]).
///
/// # Errors
/// When the venv cannot be installed or has no pyspark.
pub fn spark_home(workspace: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let venv = spark_venv(workspace, version)?;
    let home = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import pyspark,os;print(os.path.dirname(pyspark.__file__))",
        ])
        .output()
        .context("locating pyspark")?;
    let home = String::from_utf8(home.stdout)?.trim().to_owned();
    if home.is_empty() {
        bail!("no pyspark in {}", venv.display());
    }
    Ok(PathBuf::from(home))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_listening_and_congestion_events() {
        let line = r#"{"level":"INFO","fields":{"message":"listening","addr":"127.0.0.1:4321","roots":"[]"}}"#;
        assert_eq!(
            super::field(line, "addr").as_deref(),
            Some("127.0.0.1:4321")
        );
        assert_eq!(super::field(line, "algorithm"), None);
        let line = r#"{"level":"INFO","fields":{"message":"TCP congestion control of shuffle connections","algorithm":"reno","system_default":"bbr"}}"#;
        assert!(line.contains(super::CONGESTION_EVENT));
        assert_eq!(super::field(line, "algorithm").as_deref(), Some("reno"));
    }
}
