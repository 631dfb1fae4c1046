//! Small helpers for tests that run programs on the simulated cluster (the scenario tests of
//! `daemonset/tests/k8s_*.rs` and `sidecar/tests/k8s_sidecar_spark.rs`): bounded polling,
//! a plain HTTP GET of an admin endpoint, Prometheus counters, `spark-submit --master
//! k8s://…` against the fake API server, process groups killed on drop, scratch directories
//! and the pyspark package of a venv.
//!
//! Test code only: the helpers panic with a message saying what failed (that is how a test
//! fails), they never return errors. Invariants: every wait is bounded, and a [`Group`] takes
//! its whole process group down when dropped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::FakeApiServer;

/// How often [`eventually`] and [`eventually_or`] poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The read timeout of [`http_get`].
pub const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// JVM options for the Spark JVMs of tests (drivers, executors, spark-submit), which live
/// for a minute at most on a 2-core machine: the C1 compiler only (C2's optimizing
/// compiles cost more CPU than such a short run earns back; a real-Spark session takes a
/// fifth less time) and the serial collector (no GC threads to compete for the cores).
/// Spark itself is unchanged. Benchmarks do not use them: they measure JVMs as deployed.
pub const TEST_JVM_OPTIONS: &str = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC";

/// `JAVA_TOOL_OPTIONS` for a test's Spark JVMs: [`TEST_JVM_OPTIONS`], and `tmp` (created
/// here) as `java.io.tmpdir`, so what the JVMs leave there (native libraries they unpack,
/// Spark's scratch dirs) goes away with the test's directory rather than piling up in
/// `/tmp`.
///
/// # Panics
/// When `tmp` cannot be created.
pub fn test_java_tool_options(tmp: &Path) -> String {
    std::fs::create_dir_all(tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
    format!("{TEST_JVM_OPTIONS} -Djava.io.tmpdir={}", tmp.display())
}

/// Polls every [`POLL_INTERVAL`], for at most `secs`, until `f` returns `Some`.
///
/// # Panics
/// With "timed out waiting for `what`" when `f` never returned `Some`.
pub async fn eventually<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    eventually_or(what, secs, String::new, f).await
}

/// [`eventually`], with `diagnose()` in the panic message when it times out.
///
/// # Panics
/// With "timed out waiting for `what`" and `diagnose()` when `f` never returned `Some`.
pub async fn eventually_or<T>(
    what: &str,
    secs: u64,
    diagnose: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let polls = Duration::from_secs(secs).as_millis() / POLL_INTERVAL.as_millis();
    for _ in 0..polls {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let why = diagnose();
    if why.is_empty() {
        panic!("timed out waiting for {what}");
    }
    panic!("timed out waiting for {what}\n{why}");
}

/// An HTTP/1.0 `GET path` to `addr` (`host:port`); the whole answer, status line and headers
/// included.
///
/// # Panics
/// When it cannot connect, send, or read the answer within [`HTTP_READ_TIMEOUT`].
pub fn http_get(addr: &str, path: &str) -> String {
    http_get_with_headers(addr, path, &[])
}

/// [`http_get`] with more request `headers`, each a whole `Name: value` line (without its
/// line end), e.g. `Authorization: Bearer …`.
///
/// # Panics
/// As [`http_get`].
pub fn http_get_with_headers(addr: &str, path: &str, headers: &[&str]) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(HTTP_READ_TIMEOUT))
        .unwrap_or_else(|e| panic!("read timeout on {addr}: {e}"));
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("GET {path} to {addr}: {e}"));
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    out
}

/// The samples of a Prometheus text exposition, summed per metric name over all its label
/// sets (comment lines and unparsable values skipped), each sum truncated to a whole number.
pub fn metric_sums(text: &str) -> BTreeMap<String, u64> {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split([' ', '{']).next().unwrap_or_default();
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *sums.entry(name.to_owned()).or_default() += v;
        }
    }
    sums.into_iter().map(|(k, v)| (k, v as u64)).collect()
}

/// [`metric_sums`] of `GET /metrics` at `addr` (`host:port`).
///
/// # Panics
/// As [`http_get`].
pub fn scrape_metrics(addr: &str) -> BTreeMap<String, u64> {
    metric_sums(&http_get(addr, "/metrics"))
}

/// A fresh directory `kshuffle-<name>-<pid>` under the temp dir (an old one of that name is
/// removed first).
///
/// # Panics
/// When it cannot be created.
pub fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kshuffle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// The pyspark package of a Python venv (`lib/python3*/site-packages/pyspark`): the Spark
/// home that the process kubelet runs Spark's pods from.
///
/// # Panics
/// When the venv has no `lib/python3*` directory.
pub fn pyspark_home(venv: &Path) -> PathBuf {
    let lib = venv.join("lib");
    let py = std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("read {}: {e}", lib.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
        })
        .unwrap_or_else(|| panic!("no python3* in {}", lib.display()));
    py.join("site-packages/pyspark")
}

/// [`spark_submit_command`] with its stdout and stderr in `work/<name>.stdout` and
/// `work/<name>.stderr`.
///
/// # Panics
/// When the output files cannot be created.
pub fn spark_submit(
    venv: &Path,
    server: &FakeApiServer,
    work: &Path,
    deploy_mode: &str,
    name: &str,
    confs: &[String],
) -> Command {
    let output = |ext: &str| {
        let path = work.join(format!("{name}.{ext}"));
        std::fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
    };
    let mut cmd = spark_submit_command(venv, server, work, deploy_mode, name, confs);
    cmd.stdout(output("stdout")).stderr(output("stderr"));
    cmd
}

/// `spark-submit --master k8s://<server> --deploy-mode <deploy_mode> --name <name>` of the
/// pyspark `venv`, with each of `confs` as a `--conf`, run in `work` with no stdin (stdout and
/// stderr are the caller's to set). The environment is this process's, with
/// `SPARK_LOCAL_IP=127.0.0.1` (this host's name may not resolve to an address of this
/// machine), the venv's Python for PySpark, unbuffered Python output, the JVM options of
/// [`test_java_tool_options`] (temp dir `work/jvm-tmp`), and no `SPARK_HOME`/`SPARK_CONF_DIR`
/// (the venv's Spark, with its own defaults). The caller adds
/// the application and its arguments and starts it, e.g. with [`Group::spawn`].
pub fn spark_submit_command(
    venv: &Path,
    server: &FakeApiServer,
    work: &Path,
    deploy_mode: &str,
    name: &str,
    confs: &[String],
) -> Command {
    let mut cmd = Command::new(venv.join("bin/spark-submit"));
    cmd.arg("--master")
        .arg(format!("k8s://{}", server.url()))
        .args(["--deploy-mode", deploy_mode, "--name", name]);
    for conf in confs {
        cmd.arg("--conf").arg(conf);
    }
    cmd.current_dir(work)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .env("PYSPARK_PYTHON", venv.join("bin/python"))
        .env("PYTHONUNBUFFERED", "1")
        .env(
            "JAVA_TOOL_OPTIONS",
            test_java_tool_options(&work.join("jvm-tmp")),
        )
        .env_remove("SPARK_HOME")
        .env_remove("SPARK_CONF_DIR")
        .stdin(Stdio::null());
    cmd
}

/// Runs the workspace's bash script `script` (a path from the workspace root) with `args` and
/// no stdin; returns its stdout.
///
/// # Panics
/// When it cannot run or fails (its stderr in the message).
fn workspace_script(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(script);
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pyspark venv of `version`, installed on first use by `scripts/spark-venv.sh` (cached in
/// `~/.cache/kshuffle`; the test command installs both pinned versions before the tests).
///
/// # Panics
/// When the script fails or prints no venv with a `spark-submit`.
pub fn spark_venv(version: &str) -> PathBuf {
    let stdout = workspace_script("scripts/spark-venv.sh", &[std::ffi::OsStr::new(version)]);
    let venv = PathBuf::from(
        stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim(),
    );
    assert!(venv.join("bin/spark-submit").exists(), "{}", venv.display());
    venv
}

/// The confs that make Spark's driver allocate executor pods through `kshuffle-scheduler`
/// (the program `bin`), with the JVM adapter of `scheduler/jvm` built against `spark_home`'s
/// jars into `work` and named in `spark.jars` with `scheme` (`""` for a client-mode driver,
/// `"local://"` for one in a pod).
///
/// # Panics
/// When `bin` is not built (build the workspace first) or the adapter does not build.
pub fn kshuffle_scheduler_confs(
    bin: &Path,
    spark_home: &Path,
    work: &Path,
    scheme: &str,
) -> Vec<String> {
    assert!(
        bin.is_file(),
        "{} is not built: build the workspace (`cargo build --workspace`) first",
        bin.display()
    );
    let jar = work.join("kshuffle-spark.jar");
    workspace_script(
        "scheduler/jvm/build.sh",
        &[spark_home.as_os_str(), jar.as_os_str()],
    );
    vec![
        format!("spark.jars={scheme}{}", jar.display()),
        "spark.kubernetes.allocation.pods.allocator=io.kshuffle.spark.KshufflePodsAllocator".into(),
        format!("spark.kshuffle.scheduler.binary={}", bin.display()),
    ]
}

/// The JVM adapter's working directories (`kshuffle-scheduler-*`) left in the temp dir of a
/// driver run by [`spark_submit_command`] in `work`: none once the application has stopped.
///
/// # Panics
/// When that temp dir cannot be read.
pub fn kshuffle_scheduler_dirs_left(work: &Path) -> Vec<String> {
    let tmp = work.join("jvm-tmp");
    std::fs::read_dir(&tmp)
        .unwrap_or_else(|e| panic!("read {}: {e}", tmp.display()))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kshuffle-scheduler-"))
        .collect()
}

/// Pids of live processes whose command line mentions `needle` (zombies, already gone but not
/// reaped yet, left out).
///
/// # Panics
/// When `/proc` cannot be read.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")
        .unwrap_or_else(|e| panic!("read /proc: {e}"))
        .filter_map(Result::ok)
    {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// A child process leading its own process group; the whole group is killed (SIGKILL) and
/// the child reaped on drop.
#[derive(Debug)]
pub struct Group(pub Child);

// === impl Group ===

impl Group {
    /// Spawns `cmd` as the leader of a new process group.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn spawn(cmd: &mut Command) -> Group {
        std::os::unix::process::CommandExt::process_group(cmd, 0);
        Group(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
        )
    }

    /// Sends SIGKILL to the whole group (e.g. to close the pipes that processes left in it
    /// hold open); the leader is reaped on drop. A group already gone is no error.
    pub fn kill(&self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_adds_label_sets_and_skips_comments() {
        let text = "# HELP kshuffle_chunks_served_total Chunks.\n\
                    # TYPE kshuffle_chunks_served_total counter\n\
                    kshuffle_chunks_served_total{kind=\"a\"} 3\n\
                    kshuffle_chunks_served_total{kind=\"b\"} 4\n\
                    kshuffle_registered_executors 2\n\
                    kshuffle_latency_seconds_sum 0.75\n\
                    garbage line\n";
        let sums = metric_sums(text);
        assert_eq!(sums.get("kshuffle_chunks_served_total"), Some(&7));
        assert_eq!(sums.get("kshuffle_registered_executors"), Some(&2));
        assert_eq!(sums.get("kshuffle_latency_seconds_sum"), Some(&0));
        assert_eq!(sums.get("garbage"), None);
        assert_eq!(sums.len(), 3, "{sums:?}");
    }

    /// Whether `pid` is gone or a zombie (killed, not yet reaped by its new parent).
    fn dead(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
    }

    #[tokio::test]
    async fn a_dropped_group_kills_every_process_in_it() {
        use std::io::BufRead;
        // The leader's child, not the leader: what a plain Child::kill would leave running.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 600 & echo $!; wait"])
            .stdout(Stdio::piped());
        let mut group = Group::spawn(&mut cmd);
        let mut line = String::new();
        std::io::BufReader::new(group.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid = line.trim().to_owned();
        assert!(!dead(&pid), "sleep {pid} runs before the drop");
        drop(group);
        eventually("the group's sleep to die", 10, || dead(&pid).then_some(())).await;
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_returns_the_first_some() {
        let mut n = 0;
        let got = eventually("n to reach 3", 1, || {
            n += 1;
            (n == 3).then_some(n * 10)
        })
        .await;
        assert_eq!(got, 30);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out waiting for never\nwhy: none")]
    async fn eventually_or_panics_with_the_diagnosis() {
        eventually_or("never", 1, || "why: none".to_owned(), || None::<()>).await;
    }
}
