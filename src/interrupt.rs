//! Ctrl-C and SIGTERM for every long-running command: one flag the operation polls (the engine's
//! `Options::stop`, the export's cancel flag), the signal that set it, and the exit code that
//! reports it (128 + signal: 130 for SIGINT, 143 for SIGTERM).
//!
//! The handler only sets the flag: the operation notices it within a chunk or a poll interval,
//! stops, cleans up what it created (partial files, staging directories, snapshots, a stopped
//! instance is restarted) and returns an error; the command then exits with [`Interrupt::code`].
//! A second signal is not special: the cleanup must finish, or the user sends SIGKILL (and the next
//! run sweeps what a killed process left).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

/// The installed SIGINT/SIGTERM handlers and what they saw.
#[derive(Debug, Clone)]
pub struct Interrupt {
    flag: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl Interrupt {
    /// Installs the handlers for SIGINT and SIGTERM.
    pub fn install() -> io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicUsize::new(0));
        for sig in [SIGINT, SIGTERM] {
            // The number first, then the flag: whoever sees the flag finds the signal set.
            signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)?;
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
        }
        Ok(Self { flag, signal })
    }

    /// The flag to hand to the operation (set when a signal arrives).
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }

    /// The signal that arrived last, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }

    /// The signal's name for messages ("SIGINT", "SIGTERM").
    pub fn signal_name(&self) -> &'static str {
        match self.signal() {
            Some(SIGTERM) => "SIGTERM",
            _ => "SIGINT",
        }
    }

    /// The exit code for an interrupted command: 128 + the signal (130 SIGINT, 143 SIGTERM).
    pub fn code(&self) -> u8 {
        128 + self.signal().unwrap_or(SIGINT) as u8
    }
}
