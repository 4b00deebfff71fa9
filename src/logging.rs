//! The log: `tracing` events to stderr, through `tracing-subscriber`'s formatter. The level is
//! info by default (each operation's start, end, sizes, rates and warnings: what a cron or
//! systemd run leaves in its log), warn with `-q`, debug with `-v`, trace with `-vv`;
//! `DISKSTREAM_LOG` (an `EnvFilter` directive such as `debug` or `diskstream=warn`) overrides
//! both. Results go to stdout, never here.

use tracing_subscriber::EnvFilter;

/// The log variable.
pub const LOG_ENV: &str = "DISKSTREAM_LOG";

/// Installs the stderr log for the verbosity the flags ask for.
pub fn init(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = match std::env::var(LOG_ENV) {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            eprintln!("diskstream: warning: {LOG_ENV}={v:?} is not a log filter ({e}); using {level}");
            EnvFilter::new(level)
        }),
        _ => EnvFilter::new(level),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
