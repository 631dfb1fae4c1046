//! `kshuffle-scheduler`: scales one Spark application's executor pods; see the crate docs.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use kshuffle_scheduler::args::Args;
use tokio_util::sync::CancellationToken;

/// `EX_USAGE`: a bad flag or configuration.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
    };
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kshuffle-scheduler: {e:#}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A line that cannot be written is dropped: reporting it with `eprintln!` (the
        // default) panics the logging task when stderr is a closed pipe.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if settings.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kshuffle-scheduler: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "kshuffle-scheduler stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve(s: kshuffle_scheduler::args::Settings) -> anyhow::Result<()> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    if let Some(handle) = metrics.clone() {
        // Without the exporter's own runtime, histograms are drained by hand.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
    }
    let kube_config = match &s.kube_url {
        Some(url) => kube::Config::new(url.parse()?),
        None => kube::Config::infer().await?,
    };
    let client = kube::Client::try_from(kube_config)?;
    let listener = tokio::net::TcpListener::bind(s.listen).await?;
    if let Some(path) = &s.address_file {
        kshuffle_scheduler::run::write_address_file(path, listener.local_addr()?)
            .with_context(|| format!("--address-file {}", path.display()))?;
    }
    let shutdown = CancellationToken::new();
    if s.stop_on_stdin_eof {
        kshuffle_scheduler::run::cancel_at_stdin_eof(shutdown.clone());
    }
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut signals = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } } => {}
            }
            signals += 1;
            if signals > 1 {
                // A second signal aborts.
                std::process::exit(1);
            }
            tracing::info!("shutting down");
            token.cancel();
        }
    });
    kshuffle_scheduler::run::run(
        client,
        s.config,
        s.template,
        listener,
        metrics,
        s.api_token,
        shutdown,
    )
    .await?;
    Ok(())
}
