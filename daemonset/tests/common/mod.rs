//! The `kshuffle-node` binary as a child process for the end-to-end tests: a clean
//! environment (no `KSHUFFLE_*`/`KUBERNETES_*` variables, no kubeconfig of this machine), its
//! JSON log collected on a thread, the ports it logs as "listening", and waits that poll the
//! log with a generous deadline (nothing is asserted from elapsed time).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any expected state may take to appear (a loaded CI machine is slow).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The `message` of a JSON log event ("" if none).
pub fn message(ev: &Value) -> &str {
    ev.pointer("/fields/message")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// A string field of a JSON log event.
pub fn field<'a>(ev: &'a Value, name: &str) -> Option<&'a str> {
    ev.get("fields")?.get(name)?.as_str()
}

/// A running `kshuffle-node`, killed on drop.
pub struct NodeProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// The shuffle port.
    pub addr: SocketAddr,
    /// The admin port.
    pub admin: SocketAddr,
}

impl NodeProcess {
    /// `kshuffle-node` with a clean environment: `HOME` = `home` (so no `~/.kube/config` of
    /// the machine leaks in) and `KUBECONFIG` = `kubeconfig` if given.
    pub fn command(kubeconfig: Option<&Path>, home: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kshuffle-node"));
        for (key, _) in std::env::vars_os() {
            let key_s = key.to_string_lossy();
            if key_s.starts_with("KSHUFFLE_") || key_s.starts_with("KUBERNETES_") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("KUBECONFIG").env_remove("RUST_LOG");
        cmd.env("HOME", home);
        if let Some(path) = kubeconfig {
            cmd.env("KUBECONFIG", path);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        cmd
    }

    /// Spawns `cmd` (which must ask for `--log-format json` and ports 0), collects its log
    /// and waits for "listening" to learn its ports.
    pub async fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kshuffle-node");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut node = Self {
            child,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let ev = node
            .wait_for("\"listening\"", |ev| message(ev) == "listening")
            .await;
        node.addr = field(&ev, "addr").unwrap().parse().unwrap();
        node.admin = field(&ev, "admin_addr").unwrap().parse().unwrap();
        node
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The JSON events of the log so far.
    pub fn events(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// How many events match `pred`.
    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.events().iter().filter(|e| pred(e)).count()
    }

    /// Waits (polling, bounded by [`DEADLINE`]) for a log event matching `pred`; fails early
    /// if the process exits.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(ev) = self.events().into_iter().find(|e| pred(e)) {
                return ev;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "kshuffle-node exited ({status}) waiting for {what}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no {what} within {DEADLINE:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until at least `n` events match `pred`.
    pub async fn wait_count(&mut self, what: &str, n: usize, pred: impl Fn(&Value) -> bool) {
        let start = Instant::now();
        while self.count(&pred) < n {
            assert!(
                start.elapsed() < DEADLINE,
                "fewer than {n} {what} within {DEADLINE:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` until true, or fails with `what` and the node's log.
pub async fn eventually(node: &NodeProcess, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "not {what} within {DEADLINE:?}; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
