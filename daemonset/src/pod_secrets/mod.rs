//! `spark.authenticate` secrets learned from executor pods (`--auth-from-pods`).
//!
//! On Kubernetes, with `spark.authenticate=true` and no
//! `spark.authenticate.secret.{driver,executor}.file`, Spark's driver generates one secret per
//! application (`SecurityManager.initializeAuth`) and puts it in every executor pod it
//! creates as the plain env var `_SPARK_AUTH_SECRET` (`BasicExecutorFeatureStep`; checked in
//! the 3.5.9 and 4.3.0 jars). The executors authenticate to the shuffle service with that
//! secret and their app id (`spark.app.id`, which is also the pod's `spark-app-selector`
//! label). This module learns app id → secret from the executor pods of this node:
//!
//! - [`PodSecrets`]: the map, a [`SecretSource`] for the daemon. A secret is kept while the
//!   application has an executor pod on this node **or** is registered with the daemon:
//!   dynamic allocation deletes executor pods whose output other executors of the app still
//!   fetch (authenticating with the same secret). It is persisted in the state dir (file
//!   mode 0600, like YARN's shuffle service keeps app secrets in its recovery DB,
//!   `sparkShuffleRecovery.ldb`, SPARK-16711), so a restarted daemon still knows it, and
//!   forgotten once the application is removed (driver watch, admin `DELETE`, sweep) and
//!   has no pod here;
//! - [`pod_secret`]: what one pod says (pure);
//! - [`watch`]: the watch of executor pods on this node (`spark-role=executor`,
//!   `spec.nodeName=<node>`), through `kube::runtime::watcher`.
//!
//! Only literal env values are read: an `_SPARK_AUTH_SECRET` given as `valueFrom` (a
//! `secretKeyRef` a user's pod template might use) is not resolved (no `secrets` RBAC);
//! such apps are logged and their connections refused, unless a secret file covers them.
//! The first secret learned for an app is kept: a later pod claiming another one is ignored
//! and logged.
//!
//! Tests run the watch against `kshuffle_testkit::FakeApiServer`; no cluster runs in them.

pub mod watch;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::core::v1::Pod;
use kshuffle::auth::{Secret, SecretSource};
use tracing::warn;

pub use watch::{Config, run};

/// The env var of Spark's executor pods that holds the application's secret
/// (`SecurityManager.ENV_AUTH_SECRET`).
pub const ENV_AUTH_SECRET: &str = "_SPARK_AUTH_SECRET";
/// The label holding the app id (`Constants.SPARK_APP_ID_LABEL`).
pub const APP_ID_LABEL: &str = "spark-app-selector";
/// The label selector of executor pods.
pub const EXECUTOR_SELECTOR: &str = "spark-role=executor";
/// The file in the state dir holding the learned secrets.
pub const SECRETS_FILE: &str = "pod-auth-secrets";
/// Longest app id or secret accepted from a pod.
const MAX_LEN: usize = 4096;

/// What an executor pod says about its application's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSecret {
    /// The app id and the literal `_SPARK_AUTH_SECRET` value.
    Found {
        /// The `spark-app-selector` label.
        app: String,
        /// The secret.
        secret: Secret,
    },
    /// `_SPARK_AUTH_SECRET` is a `valueFrom` reference (not resolved).
    ValueFrom {
        /// The `spark-app-selector` label.
        app: String,
    },
    /// No app label, no `_SPARK_AUTH_SECRET` (auth off for that app), or unusable values.
    None,
}

/// Whether `app` can be an app id here: non-empty, bounded, no whitespace or control chars
/// (it is one word of the secrets file).
fn app_id_ok(app: &str) -> bool {
    !app.is_empty()
        && app.len() <= MAX_LEN
        && !app.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The secret an executor pod carries, from the first container with `_SPARK_AUTH_SECRET`.
pub fn pod_secret(pod: &Pod) -> PodSecret {
    let Some(app) = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(APP_ID_LABEL))
        .filter(|a| app_id_ok(a))
    else {
        return PodSecret::None;
    };
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    for env in containers.flat_map(|c| c.env.iter().flatten()) {
        if env.name != ENV_AUTH_SECRET {
            continue;
        }
        match (&env.value, &env.value_from) {
            (Some(v), _) if !v.is_empty() && v.len() <= MAX_LEN => {
                return PodSecret::Found {
                    app: app.clone(),
                    secret: Secret::new(v.as_bytes()),
                };
            }
            (_, Some(_)) => return PodSecret::ValueFrom { app: app.clone() },
            _ => {}
        }
    }
    PodSecret::None
}

/// What [`PodSecrets::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A new application's secret (persisted).
    New,
    /// The secret was already known.
    Same,
    /// The application already has another secret, which is kept.
    Conflict,
}

/// Whether an application is registered with the daemon (in memory, non-blocking).
pub type Registered = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// App id → secret, learned from executor pods; see the module docs.
pub struct PodSecrets {
    path: PathBuf,
    inner: Mutex<Inner>,
    registered: OnceLock<Registered>,
    /// Woken when a lookup finds a secret that is no longer kept, so the watch prunes it
    /// now rather than at its next interval.
    stale: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    secrets: HashMap<String, Secret>,
    /// Apps with an executor pod on this node, as of the watch's last view.
    live: HashSet<String>,
    /// The watch has listed the node's pods at least once: `live` means something.
    synced: bool,
}

// === impl PodSecrets ===

impl PodSecrets {
    /// Loads the secrets persisted in `state_dir` (none if the file does not exist).
    ///
    /// # Errors
    /// The file exists but cannot be read or is malformed.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(SECRETS_FILE);
        let secrets = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        Ok(Self {
            path,
            inner: Mutex::new(Inner {
                secrets,
                ..Inner::default()
            }),
            registered: OnceLock::new(),
            stale: tokio::sync::Notify::new(),
        })
    }

    /// Tells which applications are registered with the daemon (set once it serves).
    pub fn set_registered(&self, registered: Registered) {
        let _ = self.registered.set(registered);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_registered(&self, app: &str) -> bool {
        self.registered.get().is_some_and(|f| f(app))
    }

    /// Records `app`'s secret; a new one is persisted before this returns (blocking I/O).
    ///
    /// # Errors
    /// The secrets file cannot be written (the secret is still used in memory).
    pub fn learn(&self, app: &str, secret: Secret) -> (Learned, std::io::Result<()>) {
        let mut inner = self.lock();
        match inner.secrets.get(app) {
            Some(known) if *known == secret => return (Learned::Same, Ok(())),
            Some(_) => return (Learned::Conflict, Ok(())),
            None => {}
        }
        inner.secrets.insert(app.to_owned(), secret);
        let persisted = self.persist(&inner);
        (Learned::New, persisted)
    }

    /// The apps with an executor pod on this node now (the watch's complete view).
    pub fn set_live(&self, live: HashSet<String>) {
        let mut inner = self.lock();
        inner.live = live;
        inner.synced = true;
    }

    /// Forgets the secrets of applications neither registered nor with a pod here; returns
    /// them (sorted). Does nothing before the watch first listed the node's pods.
    ///
    /// # Errors
    /// The secrets file cannot be rewritten (the secrets are forgotten in memory).
    pub fn prune(&self) -> (Vec<String>, std::io::Result<()>) {
        let mut inner = self.lock();
        if !inner.synced {
            return (Vec::new(), Ok(()));
        }
        let mut gone: Vec<String> = inner
            .secrets
            .keys()
            .filter(|app| !inner.live.contains(*app) && !self.is_registered(app))
            .cloned()
            .collect();
        if gone.is_empty() {
            return (gone, Ok(()));
        }
        gone.sort();
        for app in &gone {
            inner.secrets.remove(app);
        }
        let persisted = self.persist(&inner);
        (gone, persisted)
    }

    /// The apps whose secret is known (sorted).
    pub fn apps(&self) -> Vec<String> {
        let mut apps: Vec<String> = self.lock().secrets.keys().cloned().collect();
        apps.sort();
        apps
    }

    /// Writes every secret to a temporary file (mode 0600), syncs it and renames it over
    /// the secrets file.
    fn persist(&self, inner: &Inner) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut text = zeroize::Zeroizing::new(String::new());
        let mut apps: Vec<&String> = inner.secrets.keys().collect();
        apps.sort();
        for app in apps {
            if let Some(secret) = inner.secrets.get(app) {
                text.push_str(app);
                text.push(' ');
                for b in secret.as_bytes() {
                    let _ = write!(text, "{b:02x}");
                }
                text.push('\n');
            }
        }
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for PodSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodSecrets")
            .field("path", &self.path)
            .field("apps", &self.lock().secrets.len())
            .finish_non_exhaustive()
    }
}

impl SecretSource for PodSecrets {
    /// The app's secret while it has a pod here or is registered (or, until the watch first
    /// listed the node's pods, any secret persisted by the previous run).
    fn secret(&self, app_id: &str) -> Option<Secret> {
        let inner = self.lock();
        let secret = inner.secrets.get(app_id)?;
        let keep = !inner.synced || inner.live.contains(app_id) || self.is_registered(app_id);
        if !keep {
            self.stale.notify_one();
        }
        keep.then(|| secret.clone())
    }
}

/// Parses the secrets file: one `app hex-secret` line per application.
fn parse(bytes: &[u8]) -> Result<HashMap<String, Secret>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let bad = || format!("line {} is not 'app-id hex-secret'", n + 1);
        let (app, hex) = line.split_once(' ').ok_or_else(bad)?;
        if !app_id_ok(app) || hex.is_empty() || hex.len() % 2 != 0 {
            return Err(bad());
        }
        let mut secret = Vec::with_capacity(hex.len() / 2);
        for pair in hex.as_bytes().chunks(2) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            secret.push(u8::from_str_radix(pair, 16).map_err(|_| bad())?);
        }
        out.insert(app.to_owned(), Secret::new(secret));
    }
    Ok(out)
}

/// Logs the outcome of [`PodSecrets::learn`] for `pod`.
pub(crate) fn log_learned(app: &str, pod: &str, learned: Learned, persisted: &std::io::Result<()>) {
    match learned {
        Learned::New => {
            tracing::info!(%app, %pod, "learned the app's spark.authenticate secret from its executor pod")
        }
        Learned::Same => {}
        Learned::Conflict => {
            warn!(%app, %pod, "executor pod carries another secret than the one learned for its app; ignored")
        }
    }
    if let Err(e) = persisted {
        warn!(%app, error = %e, "cannot persist the learned secrets; a restarted daemon will refuse the app until it sees one of its pods");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
