//! Helpers shared by the integration tests: the real `kshuffled` binary as a child process
//! ([`Daemon`]) with its JSON log parsed into [`Event`]s and its final counters into [`Stats`],
//! child processes with a deadline ([`run_with_timeout`]), the pinned pyspark venvs
//! ([`spark_venv`]) and timeouts for async code ([`within`]).
//!
//! Invariants: every wait is bounded, and nothing outlives the test: a [`Daemon`] is killed
//! when dropped, and a command run by [`run_with_timeout`] runs in its own process group,
//! which is killed (grandchildren included, e.g. Spark executors) once the command is done.
//! No sleeps: waits are `recv_timeout` on a channel fed by a waiter thread.
#![allow(dead_code, clippy::unwrap_used)]

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// How long the daemon may take to log "listening".
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to exit after SIGTERM (its own drain grace is 30 s by default,
/// but with no open connection it should exit at once).
pub const DAEMON_STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// How long `scripts/spark-venv.sh` may take (a fresh machine downloads pyspark, ~400 MB).
pub const VENV_TIMEOUT: Duration = Duration::from_secs(360);

/// A fresh self-signed certificate (rcgen) for TLS tests, written as a `kubernetes.io/tls`
/// Secret's two files would be.
pub struct TestCertificate {
    /// `tls.crt`: the certificate, PEM (`--tls-cert-file`).
    pub cert: PathBuf,
    /// `tls.key`: its private key, PEM (`--tls-key-file`).
    pub key: PathBuf,
    /// The certificate, DER: what a client trusts.
    pub der: Vec<u8>,
}

impl TestCertificate {
    /// A certificate for `names` (DNS names or IP addresses), its files in `dir`.
    pub fn create(dir: &Path, names: &[&str]) -> TestCertificate {
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let made = rcgen::generate_simple_self_signed(names).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        TestCertificate {
            cert,
            key,
            der: made.cert.der().to_vec(),
        }
    }
}

/// The workspace root (`shuffle/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// === impl Event ===

/// One line of the daemon's `--log-format json` output (tracing-subscriber's JSON layout).
#[derive(Clone, Debug)]
pub struct Event {
    /// `INFO`, `WARN`, …
    pub level: String,
    /// The `message` field.
    pub message: String,
    /// The other fields of the event.
    pub fields: Map<String, Value>,
    /// The line as written.
    pub raw: String,
}

impl Event {
    /// Parses one log line; `None` for anything that is not a JSON event.
    pub fn parse(line: &str) -> Option<Event> {
        let Value::Object(mut obj) = serde_json::from_str::<Value>(line).ok()? else {
            return None;
        };
        let level = obj
            .get("level")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let mut fields = match obj.remove("fields") {
            Some(Value::Object(fields)) => fields,
            _ => Map::new(),
        };
        let message = match fields.remove("message") {
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        Some(Event {
            level,
            message,
            fields,
            raw: line.to_owned(),
        })
    }

    /// A field as an unsigned integer (a JSON number, or a string holding one).
    pub fn u64_field(&self, name: &str) -> Option<u64> {
        match self.fields.get(name)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A field as a string (strings as they are, anything else as JSON).
    pub fn str_field(&self, name: &str) -> Option<String> {
        match self.fields.get(name)? {
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

// === impl Stats ===

/// The daemon's counters, from the fields of its final "stopped" event. Counters missing
/// from the event are 0; every field of the event is also kept in `all`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub registrations: u64,
    pub open_blocks: u64,
    pub fetch_shuffle_blocks: u64,
    /// FetchShuffleBlocks with `batchFetchEnabled`.
    pub batch_fetches: u64,
    pub remove_blocks: u64,
    pub blocks_removed: u64,
    pub local_dirs_requests: u64,
    /// ChunkFetchSuccess frames sent.
    pub chunks_served: u64,
    pub chunk_bytes: u64,
    /// StreamResponse frames sent.
    pub streams_served: u64,
    pub stream_bytes: u64,
    pub rdd_blocks_served: u64,
    pub rpc_failures: u64,
    pub chunk_failures: u64,
    /// Every integer field of the "stopped" event, including counters not listed above.
    pub all: Vec<(String, u64)>,
}

impl Stats {
    /// Reads the counters from a "stopped" event.
    pub fn from_event(event: &Event) -> Stats {
        let get = |name: &str| event.u64_field(name).unwrap_or(0);
        let mut all: Vec<(String, u64)> = event
            .fields
            .keys()
            .filter_map(|k| Some((k.clone(), event.u64_field(k)?)))
            .collect();
        all.sort();
        Stats {
            registrations: get("registrations"),
            open_blocks: get("open_blocks"),
            fetch_shuffle_blocks: get("fetch_shuffle_blocks"),
            batch_fetches: get("batch_fetches"),
            remove_blocks: get("remove_blocks"),
            blocks_removed: get("blocks_removed"),
            local_dirs_requests: get("local_dirs_requests"),
            chunks_served: get("chunks_served"),
            chunk_bytes: get("chunk_bytes"),
            streams_served: get("streams_served"),
            stream_bytes: get("stream_bytes"),
            rdd_blocks_served: get("rdd_blocks_served"),
            rpc_failures: get("rpc_failures"),
            chunk_failures: get("chunk_failures"),
            all,
        }
    }

    /// A counter of the "stopped" event by name (0 if missing), for those not listed above.
    pub fn counter(&self, name: &str) -> u64 {
        self.all
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| *v)
    }

    /// Bytes sent as chunk and stream payloads.
    pub fn bytes_served(&self) -> u64 {
        self.chunk_bytes + self.stream_bytes
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.all.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(" "))
    }
}

// === impl Daemon ===

/// A running `kshuffled`, started from the binary Cargo built for this test run.
///
/// Its stderr (the log) is collected on a thread; [`Daemon::start`] returns once it logged
/// "listening". Dropping it without [`Daemon::stop`] kills it.
pub struct Daemon {
    pid: u32,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    exited: Receiver<ExitStatus>,
    exit_status: Option<ExitStatus>,
    log_reader: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Path of the `kshuffled` binary.
    ///
    /// # Panics
    /// In a crate without that binary (e.g. `daemonset`, which uses
    /// [`Daemon::start_command`] with its own).
    pub fn bin() -> PathBuf {
        match option_env!("CARGO_BIN_EXE_kshuffled") {
            Some(path) => PathBuf::from(path),
            None => panic!("kshuffled is not a binary of this test's crate"),
        }
    }

    /// Arguments for a daemon on an ephemeral loopback port with JSON logs, confined to
    /// `allowed_root`.
    pub fn standard_args(allowed_root: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--log-format",
            "json",
            "--allowed-root",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(allowed_root.as_os_str().to_owned());
        // Its own state dir beside the root (never inside it), and an ephemeral admin port,
        // so daemons of concurrent tests never share either.
        let mut state = allowed_root.as_os_str().to_owned();
        state.push(".state");
        args.extend([
            "--state-dir".into(),
            state,
            "--admin-port".into(),
            "0".into(),
        ]);
        args
    }

    /// Starts `kshuffled` with exactly `args` (use [`Daemon::standard_args`]; the log must be
    /// JSON) and waits for its "listening" event. `KSHUFFLE_*` variables of the test's own
    /// environment are not passed on.
    ///
    /// # Panics
    /// If the binary cannot be started, exits, or does not log "listening" with a parsable
    /// `addr` within [`DAEMON_START_TIMEOUT`]; the message carries its log.
    pub fn start<I, S>(args: I) -> Daemon
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(Self::bin());
        cmd.args(args);
        Self::start_command(cmd)
    }

    /// Like [`Daemon::start`], for a command already holding the program (any binary that
    /// embeds the daemon, e.g. `kshuffle-node`), its args and any environment it needs.
    ///
    /// # Panics
    /// As [`Daemon::start`].
    pub fn start_command(mut cmd: Command) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KSHUFFLE_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (listening_tx, listening_rx) = mpsc::channel::<String>();
        let log_reader = {
            let lines = Arc::clone(&lines);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let listening = Event::parse(&line)
                        .filter(|ev| ev.message == "listening")
                        .map(|ev| ev.str_field("addr").unwrap_or_default());
                    // Logged before it is announced: once `start` returns, `events()` has it.
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    if let Some(addr) = listening {
                        let _ = listening_tx.send(addr);
                    }
                }
            })
        };
        let exited = wait_in_thread(child);
        let mut daemon = Daemon {
            pid,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            lines,
            exited,
            exit_status: None,
            log_reader: Some(log_reader),
        };
        let addr = match listening_rx.recv_timeout(DAEMON_START_TIMEOUT) {
            Ok(addr) => addr,
            Err(RecvTimeoutError::Timeout) => panic!(
                "kshuffled did not log \"listening\" within {DAEMON_START_TIMEOUT:?}; log:\n{}",
                daemon.log_text()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = daemon.exited.recv_timeout(Duration::from_secs(5)).ok();
                daemon.exit_status = status;
                panic!(
                    "kshuffled exited ({status:?}) before logging \"listening\"; log:\n{}",
                    daemon.log_text()
                )
            }
        };
        daemon.addr = addr.parse().unwrap_or_else(|e| {
            panic!(
                "\"listening\" event has addr {addr:?} ({e}); log:\n{}",
                daemon.log_text()
            )
        });
        daemon
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The log lines written so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The log as one string.
    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// The JSON events logged so far.
    pub fn events(&self) -> Vec<Event> {
        self.log_lines()
            .iter()
            .filter_map(|l| Event::parse(l))
            .collect()
    }

    /// The events at level WARN or ERROR logged so far.
    pub fn warnings(&self) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.level == "WARN" || e.level == "ERROR")
            .collect()
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        if self.exit_status.is_none() {
            self.exit_status = self.exited.try_recv().ok();
        }
        self.exit_status.is_some()
    }

    /// Sends SIGTERM and returns the counters of its "stopped" event.
    ///
    /// # Panics
    /// If it does not exit within [`DAEMON_STOP_TIMEOUT`], exits with a non-zero status, or
    /// did not log "stopped"; the message carries its log.
    pub fn stop(mut self) -> Stats {
        self.try_stop().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Daemon::stop`], returning the problem (with the log) instead of panicking.
    ///
    /// # Errors
    /// As the panics of [`Daemon::stop`].
    pub fn try_stop(&mut self) -> Result<Stats, String> {
        if !self.has_exited() {
            signal(&self.pid.to_string(), "TERM");
            match self.exited.recv_timeout(DAEMON_STOP_TIMEOUT) {
                Ok(status) => self.exit_status = Some(status),
                Err(_) => {
                    let log = self.log_text();
                    self.kill();
                    return Err(format!(
                        "kshuffled did not exit within {DAEMON_STOP_TIMEOUT:?} of SIGTERM; \
                         log:\n{log}"
                    ));
                }
            }
        }
        self.join_log_reader();
        let status = self.exit_status.expect("set above");
        let stopped = self
            .events()
            .into_iter()
            .rev()
            .find(|e| e.message == "stopped");
        match (status.success(), stopped) {
            (true, Some(event)) => Ok(Stats::from_event(&event)),
            (true, None) => Err(format!(
                "kshuffled exited 0 without logging \"stopped\"; log:\n{}",
                self.log_text()
            )),
            (false, _) => Err(format!(
                "kshuffled exited with {status} after SIGTERM; log:\n{}",
                self.log_text()
            )),
        }
    }

    fn kill(&mut self) {
        if !self.has_exited() {
            signal(&self.pid.to_string(), "KILL");
            self.exit_status = self.exited.recv_timeout(Duration::from_secs(10)).ok();
        }
        self.join_log_reader();
    }

    /// Waits (bounded) for the log thread, so that the last lines are in.
    fn join_log_reader(&mut self) {
        if let Some(handle) = self.log_reader.take() {
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let _ = handle.join();
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

// === child processes ===

/// Sends `SIGsig` to `target` (a pid, or `-pgid` for a process group). Errors (e.g. the
/// process is already gone) are ignored.
pub fn signal(target: &str, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits for `child` on a thread; the channel yields its exit status.
fn wait_in_thread(mut child: Child) -> Receiver<ExitStatus> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = tx.send(status);
        }
    });
    rx
}

/// Reads `pipe` to the end on a thread, optionally echoing each line to stderr.
fn collect_in_thread<R: Read + Send + 'static>(
    pipe: R,
    echo: Option<&'static str>,
) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut out = String::new();
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while let Ok(n) = reader.read_until(b'\n', &mut line) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            if let Some(prefix) = echo {
                eprint!("{prefix}{text}");
            }
            out.push_str(&text);
            line.clear();
        }
        let _ = tx.send(out);
    });
    rx
}

/// What a command run by [`run_with_timeout`] did.
#[derive(Debug)]
pub struct Finished {
    /// The exit status; `None` if it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// Whether it exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// "exit status: 1", "killed after 300s", …
    pub fn describe(&self) -> String {
        match self.status {
            Some(status) => format!("{status} after {:.1}s", self.elapsed.as_secs_f64()),
            None => format!(
                "killed at its deadline after {:.1}s",
                self.elapsed.as_secs_f64()
            ),
        }
    }
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) in a new process group and waits at
/// most `timeout`. When it exits or times out, the whole group is killed, so no grandchild
/// (e.g. a JVM it started) survives. If `echo_stderr` is set, stderr lines are also copied to
/// the test's stderr as they arrive, with that prefix.
///
/// # Panics
/// If the command cannot be started.
pub fn run_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
    echo_stderr: Option<&'static str>,
) -> Finished {
    use std::os::unix::process::CommandExt;

    let start = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let group = format!("-{}", child.id());
    let stdout = collect_in_thread(child.stdout.take().expect("stdout is piped"), None);
    let stderr = collect_in_thread(child.stderr.take().expect("stderr is piped"), echo_stderr);
    let exited = wait_in_thread(child);
    let status = match exited.recv_timeout(timeout) {
        Ok(status) => Some(status),
        Err(_) => {
            signal(&group, "KILL");
            let _ = exited.recv_timeout(Duration::from_secs(10));
            None
        }
    };
    // Whatever it left running in its group goes too; that also closes the pipes.
    signal(&group, "KILL");
    let drain = Duration::from_secs(10);
    Finished {
        status,
        stdout: stdout.recv_timeout(drain).unwrap_or_default(),
        stderr: stderr.recv_timeout(drain).unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// The last `max_lines` lines of `text`.
pub fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(max_lines);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("[... {skip} earlier lines ...]\n"));
    }
    out.push_str(&lines[skip..].join("\n"));
    out
}

// === python and Spark ===

/// The directories of one Spark session under a fresh temporary directory: `allowed/` (the
/// daemon's allowed root), `allowed/spark-local/` (Spark's `spark.local.dir`) and `scratch/`
/// (Spark's home and executor logs).
pub struct SparkDirs {
    /// The temporary directory; deleted on drop unless kept.
    pub tmp: tempfile::TempDir,
    /// Its canonical path.
    pub base: PathBuf,
    /// The daemon's allowed root.
    pub allowed: PathBuf,
    /// Spark's local dir, inside the allowed root.
    pub local_dir: PathBuf,
    /// Scratch space outside the root.
    pub scratch: PathBuf,
}

impl SparkDirs {
    /// Creates them under a temp dir named `prefix…`, left in place if `keep`.
    pub fn create(prefix: &str, keep: bool) -> SparkDirs {
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .disable_cleanup(keep)
            .tempdir()
            .unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let allowed = base.join("allowed");
        let local_dir = allowed.join("spark-local");
        let scratch = base.join("scratch");
        std::fs::create_dir_all(&local_dir).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        SparkDirs {
            tmp,
            base,
            allowed,
            local_dir,
            scratch,
        }
    }
    /// The command that runs `session` of the job script `script` (under `tests/spark/`)
    /// with the venv's `python`, against a daemon on `port`, in these directories, with an
    /// environment of its own (no inherited Spark settings; the JVM options of tests, with
    /// `scratch/jvm-tmp` as the JVMs' temp dir).
    pub fn python_command(&self, python: &Path, script: &str, session: &str, port: u16) -> Command {
        let script = workspace_root().join("shuffle/tests/spark").join(script);
        let mut cmd = Command::new(python);
        cmd.arg(script)
            .arg(session)
            .args(["--port", &port.to_string()])
            .arg("--local-dir")
            .arg(&self.local_dir)
            .arg("--scratch")
            .arg(&self.scratch)
            .arg("--exit-with-parent")
            .current_dir(&self.base)
            .env("PYSPARK_PYTHON", python)
            .env("PYSPARK_DRIVER_PYTHON", python)
            .env("PYTHONUNBUFFERED", "1")
            .env(
                "JAVA_TOOL_OPTIONS",
                kshuffle_testkit::support::test_java_tool_options(&self.scratch.join("jvm-tmp")),
            )
            .env_remove("SPARK_HOME")
            .env_remove("SPARK_CONF_DIR")
            .env_remove("PYSPARK_SUBMIT_ARGS");
        cmd
    }
}

/// The venv of pinned pyspark `version`, installed on first use by `scripts/spark-venv.sh`
/// (idempotent; cached in `~/.cache/kshuffle`).
///
/// # Panics
/// If the script fails or takes longer than [`VENV_TIMEOUT`].
pub fn spark_venv(version: &str) -> PathBuf {
    let script = workspace_root().join("scripts").join("spark-venv.sh");
    let run = run_with_timeout(
        Command::new("bash").arg(&script).arg(version),
        VENV_TIMEOUT,
        None,
    );
    assert!(
        run.success(),
        "{} {version}: {}\nstderr:\n{}",
        script.display(),
        run.describe(),
        run.stderr
    );
    let venv = run
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::trim);
    let venv = PathBuf::from(venv.unwrap_or_else(|| {
        panic!(
            "{} printed no venv path; stderr:\n{}",
            script.display(),
            run.stderr
        )
    }));
    assert!(
        venv.join("bin/python").exists(),
        "{} has no bin/python (from {})",
        venv.display(),
        script.display()
    );
    venv
}

// === async ===

/// Awaits `fut` for at most `limit`.
///
/// # Panics
/// On timeout, naming `what`.
pub async fn within<F: std::future::Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// [`within`] one second.
pub async fn timeout_after_1s<F: std::future::Future>(fut: F) -> F::Output {
    within(Duration::from_secs(1), "operation", fut).await
}
