//! `kshuffle-sidecar serve` and `kshuffle-sidecar webhook` as child processes for the
//! end-to-end tests. [`Sidecar`]: a clean environment (no `KSHUFFLE_*`, `_SPARK_AUTH_SECRET`
//! or `RUST_LOG` of the machine), a kubeconfig for the fake API server, its JSON log collected
//! on a thread, and the port it logs as "listening". [`WebhookProcess`]: the webhook on a free
//! port with given certificate files. Waits are bounded by [`HANG_GUARD`] and assert nothing
//! about durations.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kshuffle_testkit::FakeApiServer;
use serde_json::Value;

/// Hang guard for waits (asserts nothing about durations).
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Who the sidecar runs as: its pod's namespace and name, and the app it serves.
pub struct Identity<'a> {
    /// `KSHUFFLE_POD_NAMESPACE` (also the kubeconfig's namespace).
    pub namespace: &'a str,
    /// `KSHUFFLE_POD_NAME`.
    pub name: &'a str,
    /// `KSHUFFLE_APP_ID`.
    pub app: &'a str,
}

/// The sidecar process (killed on drop), its JSON log collected from stderr.
pub struct Sidecar {
    child: Child,
    log: Arc<Mutex<Vec<Value>>>,
    /// The shuffle port it logged as "listening".
    pub addr: SocketAddr,
}

impl Sidecar {
    /// Starts `kshuffle-sidecar serve` as `pod`, confined to `dir/local` with its state in
    /// `dir/state`, the API server `server`, `_SPARK_AUTH_SECRET` = `secret` if given, and
    /// `extra` flags; waits for "listening".
    pub fn spawn(
        dir: &Path,
        server: &FakeApiServer,
        pod: &Identity<'_>,
        secret: Option<&str>,
        extra: &[&str],
    ) -> Sidecar {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, server.kubeconfig(pod.namespace)).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kshuffle-sidecar"));
        cmd.arg("serve")
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--admin-bind", "127.0.0.1", "--admin-port", "0"])
            .arg("--allowed-root")
            .arg(dir.join("local"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--log-format", "json", "--log-level", "info"])
            .args(extra);
        for (key, _) in std::env::vars() {
            if key.starts_with("KSHUFFLE_") || key == "_SPARK_AUTH_SECRET" || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        if let Some(secret) = secret {
            cmd.env("_SPARK_AUTH_SECRET", secret);
        }
        cmd.env("KSHUFFLE_APP_ID", pod.app)
            .env("KSHUFFLE_POD_NAMESPACE", pod.namespace)
            .env("KSHUFFLE_POD_NAME", pod.name)
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start kshuffle-sidecar");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let event: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if event["fields"]["message"] == "listening" {
                    let _ = tx.send(event["fields"]["addr"].as_str().unwrap_or("").to_owned());
                }
                sink.lock().unwrap().push(event);
            }
        });
        let addr = rx
            .recv_timeout(HANG_GUARD)
            .unwrap_or_else(|_| panic!("no \"listening\": {:?}", log.lock().unwrap()));
        Sidecar {
            child,
            log,
            addr: addr.parse().unwrap(),
        }
    }

    /// The log so far, for failure messages.
    pub fn log(&self) -> String {
        format!("{:?}", self.log.lock().unwrap())
    }

    /// The first event with this message.
    pub fn logged(&self, message: &str) -> Option<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|e| e["fields"]["message"] == message)
            .cloned()
    }

    /// Sends `sig` (as `kill` takes it, e.g. `-TERM`).
    pub fn signal(&self, sig: &str) {
        signal(&self.child, sig);
    }

    /// The exit status, if it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let log = Arc::clone(&self.log);
        wait_exit(&mut self.child)
            .await
            .unwrap_or_else(|| panic!("sidecar did not exit: {:?}", log.lock().unwrap()))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kshuffle-sidecar webhook` (killed on drop), its stderr lines on a channel.
pub struct WebhookProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Where it serves HTTPS.
    pub addr: SocketAddr,
}

impl WebhookProcess {
    /// Starts the webhook with the certificate `cert` and key `key` on a free port of
    /// 127.0.0.1, `extra` flags after, and waits for "webhook listening".
    pub fn spawn(cert: &Path, key: &Path, extra: &[&str]) -> WebhookProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kshuffle-sidecar"))
            .arg("webhook")
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(extra)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kshuffle-sidecar webhook");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut webhook = WebhookProcess {
            child,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        webhook.wait_line("webhook listening");
        webhook
    }

    /// Waits for the next stderr line containing `needle` and returns it.
    pub fn wait_line(&mut self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(HANG_GUARD)
                .unwrap_or_else(|_| panic!("no {needle:?} logged"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Sends `sig` (as `kill` takes it, e.g. `-TERM`).
    pub fn signal(&self, sig: &str) {
        signal(&self.child, sig);
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        wait_exit(&mut self.child)
            .await
            .unwrap_or_else(|| panic!("the webhook did not exit"))
    }
}

impl Drop for WebhookProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `sig` (as `kill` takes it, e.g. `-TERM`) to `child`.
fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls until `child` exits; `None` after [`HANG_GUARD`].
async fn wait_exit(child: &mut Child) -> Option<ExitStatus> {
    let poll = async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, poll).await.ok()
}
