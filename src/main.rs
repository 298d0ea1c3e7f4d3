//! Entry point: parse the command line, install logging, run the command, exit non-zero with a
//! one-line reason on failure.

use clap::Parser;
use std::process::ExitCode;
use vipavatar::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Services log their work; one-shot commands only warn (their output is on stdout).
    let default = match cli.command {
        Command::Serve(_) | Command::Worker(_) => "info",
        _ => "warn",
    };
    vipavatar::process::init_logging(default);
    vipavatar::process::exit_code(vipavatar::cli::run(cli).await)
}
