//! `kshuffled`: the kshuffle daemon. Parses flags, sets up logging, and runs
//! [`kshuffle::daemon::run`] until SIGTERM/SIGINT (a second signal exits at once).

use clap::Parser;
use kshuffle::daemon::{self, DaemonArgs, Options};

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
    let cli: Cli = daemon::parse_args_or_exit();
    let runtime = daemon::start_or_exit("kshuffled", &cli.daemon.log_level, cli.daemon.log_format);
    if let Err(e) = runtime.block_on(daemon::run(&cli.daemon, Options::default(), |_| {})) {
        tracing::error!("{e:#}");
        std::process::exit(daemon::exit_code(&e));
    }
}
