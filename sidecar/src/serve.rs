//! `kshuffle-sidecar serve`: the daemon in sidecar mode.
//!
//! It is the whole `kshuffled` daemon ([`kshuffle::daemon`]) serving only its own pod, plus
//! one lifecycle rule: at the first SIGTERM (the executor pod is being deleted, e.g. by a
//! dynamic-allocation scale-down) it does **not** stop while it may still be needed:
//! - nothing registered: nothing to serve, it stops at once;
//! - otherwise it keeps serving, and checks the application's driver pod through the
//!   Kubernetes API (`spark-role=driver,spark-app-selector=<app>` in its namespace) every
//!   `--driver-check-interval`; once no such pod exists, or each one is Succeeded, Failed or
//!   being deleted, it stops (draining open streams as the daemon does);
//! - no labelled driver pod listed, but the executor pod is owned by a pod (`--driver-pod`,
//!   set by the webhook; client mode with `spark.kubernetes.driver.pod.name`, whose pod need
//!   not carry Spark's labels): that pod, looked up by name, decides the same way;
//! - in client mode there is no driver pod: when none is listed and the webhook gave the
//!   driver's RPC endpoint (`--driver-url`, Spark's `SPARK_DRIVER_URL`), a TCP connection to
//!   it decides: accepted means the driver runs, refused means it has exited (stop);
//! - an API error (outage, missing RBAC, no credentials), or a driver endpoint that does not
//!   answer either way (timeout, unresolvable name), is never read as "driver gone": it
//!   keeps serving and retries with exponential backoff up to `--driver-check-max-backoff`.
//!
//! The kubelet bounds all of this: it kills the container when the pod's
//! `terminationGracePeriodSeconds` (set by the webhook) runs out. A second SIGTERM/SIGINT
//! stops at once.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kshuffle::auth::{Secret, SecretSource, StaticSecrets};
use kshuffle::daemon::{self, DaemonArgs, Options, Running, parse_duration};
use kube::api::{Api, ListParams};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

use crate::inject::{ENV_AUTH_SECRET, LABEL_APP_ID, LABEL_SPARK_ROLE};

/// `kshuffle-sidecar serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Every flag of `kshuffled`.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Spark application id (the pod's `spark-app-selector` label; set by the webhook).
    #[arg(long, env = "KSHUFFLE_APP_ID")]
    pub app_id: String,
    /// Namespace of the pod (and of the driver pod).
    #[arg(long, env = "KSHUFFLE_POD_NAMESPACE")]
    pub namespace: String,
    /// Name of this pod (for logs).
    #[arg(long, env = "KSHUFFLE_POD_NAME", default_value = "")]
    pub pod_name: String,
    /// After SIGTERM, how often the driver pod is checked.
    #[arg(long, env = "KSHUFFLE_DRIVER_CHECK_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub driver_check_interval: Duration,
    /// Longest wait between checks while the API server fails.
    #[arg(long, env = "KSHUFFLE_DRIVER_CHECK_MAX_BACKOFF", default_value = "60s", value_parser = parse_duration)]
    pub driver_check_max_backoff: Duration,
    /// The driver's RPC endpoint, `spark://CoarseGrainedScheduler@host:port` (Spark's
    /// `SPARK_DRIVER_URL`; set by the webhook in client mode): asked when no driver pod is listed.
    #[arg(long, env = crate::inject::ENV_DRIVER_URL)]
    pub driver_url: Option<DriverAddr>,
    /// Name of the pod the executor pod is owned by (its `ownerReference` to a Pod; set by the
    /// webhook): looked up by name when no labelled driver pod is listed.
    #[arg(long, env = crate::inject::ENV_DRIVER_POD)]
    pub driver_pod: Option<String>,
    /// Spark's secret for this application (`_SPARK_AUTH_SECRET`), set by [`ServeArgs::prepare`];
    /// not a flag (a secret on the command line would show in `ps`).
    #[arg(skip)]
    pub auth_secret: Option<Secret>,
}

/// How long a connection to the driver's endpoint may take before the check counts as failed.
pub const DRIVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The host and port of a Spark RPC endpoint address (`spark://name@host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverAddr {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// RPC port.
    pub port: u16,
}

/// A `--driver-url` that is not `spark://name@host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Spark RPC endpoint address (spark://name@host:port): {0:?}")]
pub struct BadDriverUrl(String);

impl FromStr for DriverAddr {
    type Err = BadDriverUrl;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = || BadDriverUrl(url.to_owned());
        let rest = url.strip_prefix("spark://").ok_or_else(bad)?;
        // The endpoint name never contains '@'; a host cannot.
        let (_, host_port) = rest.rsplit_once('@').ok_or_else(bad)?;
        let (host, port) = host_port.rsplit_once(':').ok_or_else(bad)?;
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']').ok_or_else(bad)?,
            None => host,
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || host.contains(['/', '@', '[', ']']) {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for DriverAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Asks the driver's RPC endpoint whether the application runs: a connection accepted means
/// it does, a connection refused means the driver has exited.
///
/// # Errors
/// Anything else (no answer within `timeout`, a name that does not resolve, no route): the
/// driver's state is unknown, so the caller must keep serving.
pub async fn probe_driver(addr: &DriverAddr, timeout: Duration) -> anyhow::Result<DriverState> {
    let connect = tokio::net::TcpStream::connect((addr.host.as_str(), addr.port));
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(_)) => Ok(DriverState::Alive),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(DriverState::Gone(
            format!("no driver pod, and the driver at {addr} refuses connections"),
        )),
        Ok(Err(e)) => Err(anyhow::anyhow!("connect to the driver at {addr}: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "connect to the driver at {addr}: no answer within {timeout:?}"
        )),
    }
}

/// What the driver pods say about the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverState {
    /// A driver pod is not finished: keep serving.
    Alive,
    /// No driver pod is left running: stop. The reason is logged.
    Gone(String),
}

/// Decides from the listed driver pods (pure).
pub fn driver_state(pods: &[Pod]) -> DriverState {
    if pods.is_empty() {
        return DriverState::Gone("no driver pod".to_owned());
    }
    let alive = pods.iter().any(|pod| {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        !deleting && !matches!(phase, Some("Succeeded" | "Failed"))
    });
    if alive {
        DriverState::Alive
    } else {
        let states: Vec<String> = pods
            .iter()
            .map(|pod| {
                let name = pod.metadata.name.as_deref().unwrap_or("?");
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if pod.metadata.deletion_timestamp.is_some() {
                    format!("{name}: being deleted")
                } else {
                    format!("{name}: {}", phase.unwrap_or("?"))
                }
            })
            .collect();
        DriverState::Gone(format!("driver pod finished ({})", states.join(", ")))
    }
}

impl ServeArgs {
    /// Validates the sidecar's own flags, and keeps Spark's generated per-app secret
    /// (`_SPARK_AUTH_SECRET`, copied into this container by the webhook): [`run`] then
    /// requires `spark.authenticate` with exactly that secret for exactly this pod's app
    /// (`--app-id`), unless auth flags are given explicitly. The secret stays in memory.
    ///
    /// # Errors
    /// A bad flag, or a secret that cannot be written.
    pub fn prepare(&mut self, auth_secret: Option<String>) -> anyhow::Result<()> {
        if self.app_id.trim().is_empty() {
            anyhow::bail!("--app-id (KSHUFFLE_APP_ID) must be the Spark application id");
        }
        if self.namespace.trim().is_empty() {
            anyhow::bail!("--namespace (KSHUFFLE_POD_NAMESPACE) must be the pod's namespace");
        }
        if self.driver_check_interval.is_zero() || self.driver_check_max_backoff.is_zero() {
            anyhow::bail!("--driver-check-interval and --driver-check-max-backoff must be > 0");
        }
        let explicit =
            self.daemon.auth_secret_file.is_some() || self.daemon.auth_secrets_dir.is_some();
        if let Some(secret) = auth_secret.filter(|s| !s.is_empty())
            && !explicit
        {
            self.auth_secret = Some(Secret::from(secret.as_str()));
        }
        Ok(())
    }

    /// The daemon's secrets: this app's secret from `_SPARK_AUTH_SECRET`, if any.
    fn secrets(&self) -> Option<Arc<dyn SecretSource>> {
        let secret = self.auth_secret.clone()?;
        let per_app = HashMap::from([(self.app_id.clone(), secret)]);
        Some(Arc::new(StaticSecrets::per_app(per_app)))
    }
}

/// The env var the webhook copies Spark's generated secret into.
pub fn auth_secret_from_env() -> Option<String> {
    std::env::var(ENV_AUTH_SECRET).ok()
}

/// Runs the sidecar until it decides to stop (see the module docs).
///
/// # Errors
/// As [`kshuffle::daemon::run`].
pub async fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let options = Options {
        keep_serving_on_signal: true,
    };
    let lifecycle = Lifecycle {
        app_id: args.app_id.clone(),
        namespace: args.namespace.clone(),
        pod_name: args.pod_name.clone(),
        interval: args.driver_check_interval,
        max_backoff: args.driver_check_max_backoff,
        driver_url: args.driver_url.clone(),
        driver_pod: args.driver_pod.clone().filter(|n| !n.is_empty()),
    };
    daemon::run_with_secrets(&args.daemon, options, args.secrets(), move |running| {
        // Registered here, synchronously, so a SIGTERM from now on reaches the lifecycle even
        // if the daemon's own signal task has not subscribed yet (a stream only sees signals
        // sent after it was created).
        let term = signal(SignalKind::terminate())
            .inspect_err(|e| warn!(error = %e, "cannot watch SIGTERM"))
            .ok();
        info!(app = %lifecycle.app_id, pod = %lifecycle.pod_name, "sidecar serving");
        tokio::spawn(lifecycle.run(running, term));
    })
    .await
}

struct Lifecycle {
    app_id: String,
    namespace: String,
    pod_name: String,
    interval: Duration,
    max_backoff: Duration,
    driver_url: Option<DriverAddr>,
    driver_pod: Option<String>,
}

impl Lifecycle {
    async fn run(self, running: Running, mut term: Option<Signal>) {
        let own_signal = async {
            match term.as_mut() {
                Some(term) => {
                    term.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = running.signalled.cancelled() => {}
            () = own_signal => {}
            () = running.shutdown.cancelled() => return,
        }
        if running.service.store.registry().is_empty() {
            info!(pod = %self.pod_name, "signal received and nothing registered: stopping");
            running.shutdown.cancel();
            return;
        }
        info!(
            pod = %self.pod_name,
            app = %self.app_id,
            check = %driver_check(self.driver_pod.as_deref(), self.driver_url.as_ref()),
            "signal received: serving until the driver ends"
        );
        // Built lazily: without Kubernetes credentials the sidecar still serves (until the
        // kubelet's grace period ends), it just cannot learn that the driver is gone.
        let mut client: Option<kube::Client> = None;
        let mut delay = self.interval;
        let selector = format!("{LABEL_SPARK_ROLE}=driver,{LABEL_APP_ID}={}", self.app_id);
        loop {
            let checked = match &client {
                Some(client) => self.check(client, &selector).await,
                None => match kube::Client::try_default().await {
                    Ok(new) => {
                        let checked = self.check(&new, &selector).await;
                        client = Some(new);
                        checked
                    }
                    Err(e) => Err(anyhow::anyhow!("no Kubernetes client: {e}")),
                },
            };
            match checked {
                Ok(DriverState::Gone(reason)) => {
                    info!(app = %self.app_id, %reason, "driver gone: stopping");
                    running.shutdown.cancel();
                    return;
                }
                Ok(DriverState::Alive) => delay = self.interval,
                Err(e) => {
                    delay = (delay * 2).min(self.max_backoff);
                    warn!(error = %format!("{e:#}"), retry_in = ?delay, "cannot check whether the driver runs; serving on");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = running.shutdown.cancelled() => return,
            }
        }
    }

    async fn check(&self, client: &kube::Client, selector: &str) -> anyhow::Result<DriverState> {
        let api: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let list = api
            .list(&ListParams::default().labels(selector))
            .await
            .with_context(|| format!("list pods {selector} in {}", self.namespace))?;
        if !list.items.is_empty() {
            return Ok(driver_state(&list.items));
        }
        if let Some(name) = &self.driver_pod {
            // The pod that owns ours, labelled as Spark's driver or not.
            let by_name = api
                .list(&ListParams::default().fields(&format!("metadata.name={name}")))
                .await
                .with_context(|| format!("list pod {name} in {}", self.namespace))?;
            return Ok(match driver_state(&by_name.items) {
                DriverState::Gone(reason) if by_name.items.is_empty() => {
                    DriverState::Gone(format!("{reason} (neither labelled nor named {name})"))
                }
                state => state,
            });
        }
        match &self.driver_url {
            // Client mode: no driver pod, ever; its endpoint tells.
            Some(addr) => probe_driver(addr, DRIVER_CONNECT_TIMEOUT).await,
            None => Ok(driver_state(&list.items)),
        }
    }
}

/// What decides that the driver is gone, in the order [`Lifecycle::check`] asks, for the log:
/// Spark's labelled driver pods, else the pod named by `--driver-pod`, else (client mode) the
/// driver's endpoint.
fn driver_check(driver_pod: Option<&str>, driver_url: Option<&DriverAddr>) -> String {
    match (driver_pod, driver_url) {
        (Some(name), _) => format!("driver pod (labelled, else named {name})"),
        (None, Some(addr)) => format!("driver pod (labelled), else driver endpoint {addr}"),
        (None, None) => "driver pod (labelled)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(phase: &str, deleting: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("driver".to_owned()),
                deletion_timestamp: deleting
                    .then_some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn driver_urls_parse_as_spark_writes_them() {
        let parse = |s: &str| s.parse::<DriverAddr>();
        let addr = parse("spark://CoarseGrainedScheduler@app-driver-svc.ns.svc:7078").unwrap();
        assert_eq!(
            (addr.host.as_str(), addr.port),
            ("app-driver-svc.ns.svc", 7078)
        );
        assert_eq!(addr.to_string(), "app-driver-svc.ns.svc:7078");
        let v6 = parse("spark://CoarseGrainedScheduler@[fd00::1]:40000").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("fd00::1", 40000));
        assert_eq!(v6.to_string(), "[fd00::1]:40000");
        for bad in [
            "",
            "CoarseGrainedScheduler@10.0.0.1:7078",
            "http://CoarseGrainedScheduler@10.0.0.1:7078",
            "spark://10.0.0.1:7078",
            "spark://CoarseGrainedScheduler@10.0.0.1",
            "spark://CoarseGrainedScheduler@:7078",
            "spark://CoarseGrainedScheduler@10.0.0.1:0",
            "spark://CoarseGrainedScheduler@10.0.0.1:70780",
            "spark://CoarseGrainedScheduler@[fd00::1:7078",
            "spark://CoarseGrainedScheduler@host/x:7078",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_driver_endpoint_decides_only_when_it_answers_either_way() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = DriverAddr {
            host: "127.0.0.1".to_owned(),
            port: listener.local_addr().unwrap().port(),
        };
        let timeout = Duration::from_secs(30);
        assert_eq!(
            probe_driver(&addr, timeout).await.unwrap(),
            DriverState::Alive
        );
        drop(listener);
        let gone = probe_driver(&addr, timeout).await.unwrap();
        assert!(
            matches!(&gone, DriverState::Gone(r) if r.contains("refuses connections")),
            "{gone:?}"
        );
        // A name that does not resolve is not "gone".
        let unknown = DriverAddr {
            host: "no-such-driver.invalid".to_owned(),
            port: 7078,
        };
        assert!(
            probe_driver(&unknown, Duration::from_secs(2))
                .await
                .is_err()
        );
    }

    #[test]
    fn the_logged_check_names_the_pod_or_endpoint_that_decides() {
        let addr: DriverAddr = "spark://CoarseGrainedScheduler@10.0.0.7:7078"
            .parse()
            .unwrap();
        assert_eq!(driver_check(None, None), "driver pod (labelled)");
        assert_eq!(
            driver_check(None, Some(&addr)),
            "driver pod (labelled), else driver endpoint 10.0.0.7:7078"
        );
        // A named pod is asked before the endpoint, which then never decides.
        assert_eq!(
            driver_check(Some("notebook-0"), Some(&addr)),
            "driver pod (labelled, else named notebook-0)"
        );
    }

    #[test]
    fn the_driver_is_alive_until_every_driver_pod_is_finished() {
        assert!(matches!(driver_state(&[]), DriverState::Gone(r) if r.contains("no driver pod")));
        for phase in ["Pending", "Running", "Unknown"] {
            assert_eq!(
                driver_state(&[pod(phase, false)]),
                DriverState::Alive,
                "{phase}"
            );
        }
        for phase in ["Succeeded", "Failed"] {
            assert!(
                matches!(driver_state(&[pod(phase, false)]), DriverState::Gone(r) if r.contains(phase))
            );
        }
        assert!(
            matches!(driver_state(&[pod("Running", true)]), DriverState::Gone(r) if r.contains("being deleted"))
        );
        // A restarted driver (old one failed, new one running) keeps the app alive.
        assert_eq!(
            driver_state(&[pod("Failed", false), pod("Running", false)]),
            DriverState::Alive
        );
    }
}
