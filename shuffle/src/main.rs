//! `kshuffled`: the kshuffle daemon. Parses flags, sets up logging, and runs
//! [`kshuffle::daemon::run`] until SIGTERM/SIGINT (a second signal exits at once).

use clap::Parser;
use kshuffle::daemon::{self, DaemonArgs, EX_USAGE, Options};

#[derive(Debug, Parser)]
#[command(
    name = "kshuffled",
    version,
    about = "External shuffle service for Apache Spark"
)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonArgs,
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let usage = e.use_stderr();
        let _ = e.print();
        // Help and version go to stdout and succeed; every real usage error is EX_USAGE.
        std::process::exit(if usage { EX_USAGE } else { 0 });
    });
    if let Err(e) = daemon::init_tracing(&cli.daemon.log_level, cli.daemon.log_format) {
        eprintln!("kshuffled: {e:#}");
        std::process::exit(EX_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(daemon::run(&cli.daemon, Options::default(), |_| {})) {
        tracing::error!("{e:#}");
        std::process::exit(daemon::exit_code(&e));
    }
}
