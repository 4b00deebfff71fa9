//! The `diskstream` command line: parses arguments, runs engine and orchestrator operations, and
//! prints results for people (progress bars on a TTY, plain lines otherwise) or programs (`--json`).
#![forbid(unsafe_code)]

mod agent_cmd;
mod bench_cmd;
mod cli;
mod contract;
mod demo_cmd;
mod exit;
mod export_cmd;
mod install_cmd;
mod interrupt;
mod jobs;
mod logging;
mod output;
mod throttle;
mod units;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
