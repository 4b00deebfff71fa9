//! The `diskstream` command line: parses arguments, runs engine and orchestrator operations, and
//! prints results for people (progress bars on a TTY, plain lines otherwise) or programs (`--json`).
#![forbid(unsafe_code)]

/// `println!` that does not panic when stdout is gone (`diskstream image info | true`): the
/// output is lost, the command still finishes its work and cleanup and exits with its own code.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that does not panic when stderr is gone (`diskstream export ... 2>&1 | head`,
/// which used to turn a finished export into a panic).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

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
