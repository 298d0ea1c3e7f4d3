//! `vipavatar-bench` (what `vipavatar bench` runs): parse the options, install logging, run the
//! benchmark, exit non-zero with a one-line reason on failure.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = vipavatar_bench::BenchArgs::parse();
    vipavatar::process::init_logging("warn");
    vipavatar::process::exit_code(vipavatar_bench::run(args).await)
}
