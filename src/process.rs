//! What every binary of the workspace (`vipavatar`, `vipavatar-bench`) does around its command:
//! logging to stderr, and the exit status with a one-line reason on failure.

use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Log to stderr at `RUST_LOG`'s levels, else at `default` ("info", "warn", ...); colours only
/// on a terminal.
pub fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

/// Success, or failure after printing the error on one line (a pipeline error with its code).
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
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
