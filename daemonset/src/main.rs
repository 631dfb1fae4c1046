//! `kshuffle-node`: the kshuffle daemon in node mode (one per Kubernetes node, a DaemonSet),
//! which adds a watch of Spark driver pods to `kshuffled`: an application's files are removed
//! once its driver pod ended (see [`kshuffle_daemonset::driver`]).
//!
//! With `--auth-from-pods` it also requires `spark.authenticate`, learning each
//! application's secret from its executor pods on this node (see
//! [`kshuffle_daemonset::pod_secrets`]).
//!
//! Every `kshuffled` flag applies unchanged. The Kubernetes connection is kube's standard
//! inference: `KUBECONFIG` (or `~/.kube/config`), else the pod's service account. Readiness
//! does not wait for the API server: shuffle data is served whether or not the watch is up.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kshuffle::daemon::{self, DaemonArgs, EX_USAGE, Options};
use kshuffle_daemonset::{driver, pod_secrets};

#[derive(Debug, Parser)]
#[command(
    name = "kshuffle-node",
    version,
    about = "External shuffle service for Apache Spark, node mode: cleans up when drivers end"
)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Watch driver pods of this namespace only (empty: all namespaces).
    #[arg(long, env = "KSHUFFLE_WATCH_NAMESPACE", default_value = "")]
    watch_namespace: String,
    /// How long after a driver ended its application's files are removed (reducers may be
    /// finishing a last fetch); 0 removes at once.
    #[arg(long, env = "KSHUFFLE_DRIVER_CLEANUP_DELAY", default_value = "30s", value_parser = daemon::parse_duration)]
    driver_cleanup_delay: Duration,
    /// Watch driver pods; false runs as plain `kshuffled` (no Kubernetes connection).
    #[arg(long, env = "KSHUFFLE_DRIVER_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    driver_watch: bool,
    /// Require `spark.authenticate`, with each application's secret learned from the
    /// `_SPARK_AUTH_SECRET` env of its executor pods on this node (Spark puts it there);
    /// secret files, if given, are consulted after. Needs --node-name.
    #[arg(long, env = "KSHUFFLE_AUTH_FROM_PODS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    auth_from_pods: bool,
    /// This node's name (the DaemonSet sets NODE_NAME from `spec.nodeName`): only executor
    /// pods on it are trusted for --auth-from-pods.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
}

fn main() {
    let cli: Cli = daemon::parse_args_or_exit();
    let runtime = daemon::start_or_exit(
        "kshuffle-node",
        &cli.daemon.log_level,
        cli.daemon.log_format,
    );
    let pod_secrets = if cli.auth_from_pods {
        match open_pod_secrets(&cli) {
            Ok(secrets) => Some(secrets),
            Err(e) => {
                tracing::error!("--auth-from-pods: {e:#}");
                std::process::exit(EX_USAGE);
            }
        }
    } else {
        None
    };
    // The client is built before serving (no request is made yet), so a missing
    // configuration is a usage error at start, never a surprise later.
    let client = if cli.driver_watch || cli.auth_from_pods {
        match runtime.block_on(kube_client()) {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::error!(
                    "--driver-watch / --auth-from-pods: {e:#}; set KUBECONFIG, run in a pod with a service account, or pass --driver-watch=false (and no --auth-from-pods)"
                );
                std::process::exit(EX_USAGE);
            }
        }
    } else {
        tracing::info!("--driver-watch=false: driver pods are not watched");
        None
    };
    let driver_watch = cli.driver_watch;
    if !driver_watch && cli.auth_from_pods {
        tracing::info!("--driver-watch=false: driver pods are not watched");
    }
    let namespace = Some(cli.watch_namespace.trim().to_owned()).filter(|ns| !ns.is_empty());
    let secrets_config = pod_secrets::Config {
        namespace: namespace.clone(),
        ..pod_secrets::Config::new(cli.node_name.trim())
    };
    let source = pod_secrets
        .clone()
        .map(|s| s as Arc<dyn kshuffle::auth::SecretSource>);
    let config = driver::Config {
        namespace,
        cleanup_delay: cli.driver_cleanup_delay,
        ..driver::Config::default()
    };
    let embed = move |running: daemon::Running| {
        if let (Some(client), Some(secrets)) = (client.clone(), pod_secrets) {
            let service = Arc::clone(&running.service);
            secrets.set_registered(Box::new(move |app: &str| {
                !service.store.registry().executors_of(app).is_empty()
            }));
            let watch = tokio::spawn(pod_secrets::run(
                client,
                secrets_config,
                secrets,
                running.shutdown.clone(),
            ));
            tokio::spawn(async move {
                if let Err(e) = watch.await
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "the executor pod watch failed; secrets of new apps are no longer learned");
                }
            });
        }
        if let Some(client) = client.filter(|_| driver_watch) {
            let service = running.service;
            let watch = tokio::spawn(driver::run(client, config, service, running.shutdown));
            // The watch never returns early on its own; a panic would end it silently.
            tokio::spawn(async move {
                if let Err(e) = watch.await
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "the driver watch failed; apps are no longer removed when their driver ends");
                }
            });
        }
    };
    if let Err(e) = runtime.block_on(daemon::run_with_secrets(
        &cli.daemon,
        Options::default(),
        source,
        embed,
    )) {
        tracing::error!("{e:#}");
        std::process::exit(daemon::exit_code(&e));
    }
}

/// The secrets store of --auth-from-pods, loaded from the state dir.
fn open_pod_secrets(cli: &Cli) -> anyhow::Result<Arc<pod_secrets::PodSecrets>> {
    anyhow::ensure!(
        !cli.node_name.trim().is_empty(),
        "--node-name (env NODE_NAME) is required: only executor pods of this node are trusted"
    );
    let dir = cli
        .daemon
        .state_dir_or_default()
        .ok_or_else(|| anyhow::anyhow!("--state-dir: no default (set HOME or the flag)"))?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("--state-dir: cannot create {}: {e}", dir.display()))?;
    Ok(Arc::new(pod_secrets::PodSecrets::open(&dir)?))
}

/// A client from kube's standard inference (kubeconfig, else in-cluster).
async fn kube_client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| anyhow::anyhow!("no Kubernetes configuration: {e}"))?;
    // The watch retries with its own capped backoff and logs the outage; kube's built-in
    // retry of 429/503 (up to 15 times, delays growing past minutes) would hide it.
    config.default_retry = false;
    kube::Client::try_from(config)
        .map_err(|e| anyhow::anyhow!("cannot build a Kubernetes client: {e}"))
}
