//! `kshuffle-sidecar`: `webhook` serves the mutating admission webhook that injects the
//! sidecar into Spark executor pods; `serve` is the injected sidecar (the kshuffle daemon that
//! keeps serving after SIGTERM while the application's driver lives).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kshuffle::daemon::{self, EX_USAGE};
use kshuffle_sidecar::serve::{self, ServeArgs};
use kshuffle_sidecar::webhook::{self, WebhookArgs, tls::CertStore};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "kshuffle-sidecar", version, about = "kshuffle in sidecar mode")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the mutating admission webhook over HTTPS.
    Webhook(Box<WebhookArgs>),
    /// Run the sidecar: the kshuffle daemon for this pod, serving on after SIGTERM while the driver lives.
    Serve(Box<ServeArgs>),
}

fn main() {
    let cli: Cli = daemon::parse_args_or_exit();
    let (level, format) = match &cli.command {
        Command::Webhook(a) => (a.log_level.clone(), a.log_format),
        Command::Serve(a) => (a.daemon.log_level.clone(), a.daemon.log_format),
    };
    let runtime = daemon::start_or_exit("kshuffle-sidecar", &level, format);
    // One TLS provider for the process (the webhook's server and kube's client): ring.
    // Installing it explicitly keeps kube's client working even if another provider is ever
    // linked in; an error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let code = match cli.command {
        Command::Webhook(args) => runtime.block_on(run_webhook(*args)),
        Command::Serve(mut args) => match args.prepare(serve::auth_secret_from_env()) {
            Err(e) => Err((EX_USAGE, e)),
            Ok(()) => runtime
                .block_on(serve::run(&args))
                .map_err(|e| (daemon::exit_code(&e), e)),
        },
    };
    if let Err((code, e)) = code {
        tracing::error!("{e:#}");
        std::process::exit(code);
    }
}

async fn run_webhook(args: WebhookArgs) -> Result<(), (i32, anyhow::Error)> {
    let usage = |e: anyhow::Error| (EX_USAGE, e);
    let (config, settings) = args.validate().map_err(usage)?;
    let certs = Arc::new(
        CertStore::load(&args.tls_cert_file, &args.tls_key_file).map_err(|e| usage(e.into()))?,
    );
    let tls = Arc::new(webhook::tls::server_config(&certs).map_err(|e| usage(e.into()))?);
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
        .map_err(|e| (1, e))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(
        Arc::clone(&certs).reload_periodically(args.cert_reload_interval, shutdown.clone()),
    );
    // Subscribed before serving, so no early SIGTERM meets the default (fatal) disposition.
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => {
            tokio::spawn(stop_on_signal(term, int, shutdown.clone()));
        }
        _ => tracing::warn!("cannot install signal handlers; stop with SIGKILL"),
    }
    webhook::serve(listener, tls, config, settings, shutdown)
        .await
        .context("webhook server failed")
        .map_err(|e| (1, e))
}

/// Cancels `shutdown` at the first SIGTERM/SIGINT; exits the process at the second.
async fn stop_on_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutting down (signal again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(1);
}
