//! The process exit codes shared by every command: one table, documented in `docs/json.md` and
//! the README, and the JSON `kind` each error class carries.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | failure (I/O, an execution error, a bad configuration, anything not below) |
//! | 2 | usage: a bad or missing argument (clap's code; also `export` without `-n`) |
//! | 3 | integrity: the data is damaged (corrupt or truncated image, checksum mismatch) |
//! | 4 | refused: a prerequisite was not met or a pre hook vetoed; nothing was changed |
//! | 5 | busy: a lock could not be taken in time (`--lock-timeout`) |
//! | 130 | interrupted by SIGINT (partial outputs removed, started work undone) |
//! | 143 | interrupted by SIGTERM |
//! | 129 | interrupted by SIGHUP (the terminal went away; not when started with SIGHUP ignored, as by `nohup`) |

use std::process::ExitCode;

/// Any failure not named below.
pub const EXIT_FAILURE: u8 = 1;
/// A bad or missing argument.
pub const EXIT_USAGE: u8 = 2;
/// Damaged data: a corrupt or truncated image, a checksum mismatch.
pub const EXIT_INTEGRITY: u8 = 3;
/// Refused by a prerequisite or a pre hook; nothing was changed.
pub const EXIT_REFUSED: u8 = 4;
/// A lock could not be taken in time.
pub const EXIT_BUSY: u8 = 5;
/// Interrupted by SIGINT (128 + 2; SIGTERM gives 143: [`crate::interrupt::Interrupt::code`]).
pub const EXIT_SIGINT: u8 = 130;

/// The code as a process exit status.
pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}
