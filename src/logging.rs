//! The log: `tracing` events to stderr, through `tracing-subscriber`'s formatter. The level is
//! info by default (each operation's start, end, sizes, rates and warnings: what a cron or
//! systemd run leaves in its log), warn with `-q`, debug with `-v`, trace with `-vv`;
//! `DISKSTREAM_LOG` (an `EnvFilter` directive such as `debug` or `diskstream=warn`) overrides
//! both. Results go to stdout, never here.
//!
//! Names come from users and from directory listings, and a file name may hold a newline or a
//! terminal escape: every field of every line is written with its control characters escaped
//! ([`escape_controls`]), so a name can neither forge a line (a log line, or a `{...}` line
//! that a consumer of `--progress json` would take for an event) nor drive the terminal.

use std::fmt;

pub use diskstream_engine::report::{escape_controls, escape_keeping_lines};

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{debug_fn, Writer};
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
            errln!("diskstream: warning: {LOG_ENV}={v:?} is not a log filter ({e}); using {level}");
            EnvFilter::new(level)
        }),
        _ => EnvFilter::new(level),
    };
    let fields = debug_fn(
        |w: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn fmt::Debug| {
            let text = format!("{value:?}");
            match field.name() {
                "message" => write!(w, "{}", escape_controls(&text)),
                name => write!(w, "{name}={}", escape_controls(&text)),
            }
        },
    )
    .delimited(" ");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(fields)
        .with_writer(|| Stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// stderr for the log, whose write errors are dropped: with stderr gone (a reader that quit)
/// the run goes on to its end and its cleanup, where tracing-subscriber's fallback report of a
/// failed write (`eprintln!`) would panic.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
