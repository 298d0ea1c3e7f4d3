//! Entry point: parse the command line, install logging, run the command, exit non-zero with a
//! one-line reason on failure.

use clap::Parser;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = vipavatar::cli::Cli::parse();
    // Services log their work; one-shot commands only warn (their output is on stdout).
    let default = match cli.command {
        vipavatar::cli::Command::Serve(_) | vipavatar::cli::Command::Worker(_) => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    match vipavatar::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<vipavatar_pipeline::PipelineError>() {
                Some(p) => eprintln!("error ({}): {p}", p.code()),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
