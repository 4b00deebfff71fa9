//! Ctrl-C and SIGTERM for every long-running command: one flag the operation polls (the engine's
//! `Options::stop`, the export's cancel flag), the signal that set it, and the exit code that
//! reports it (128 + signal: 130 for SIGINT, 143 for SIGTERM).
//!
//! The handler only sets the flag: the operation notices it within a chunk or a poll interval,
//! stops, cleans up what it created (partial files, staging directories, snapshots, a stopped
//! instance is restarted) and returns an error; the command then exits with [`Interrupt::code`].
//! A second signal is not special: the cleanup must finish, or the user sends SIGKILL (and the next
//! run sweeps what a killed process left).
//!
//! Stopping waits for the reads and writes already handed to the device (a buffer cannot be
//! released while the kernel may still fill it, and a read the device has cannot be called
//! back): on a device that crawls, that can take a while. A run still going [`NOTICE_AFTER`]
//! after the signal says so on stderr, once, so the wait is never silent.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};

/// How long after a signal a run that is still stopping says so.
pub const NOTICE_AFTER: Duration = Duration::from_secs(2);

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
        // A thread that sleeps in a read of signal-hook's pipe until the first signal.
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        std::thread::Builder::new()
            .name("interrupt-notice".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    std::thread::sleep(NOTICE_AFTER);
                    let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                    eprintln!(
                        "diskstream: {name}: still stopping: waiting for the reads and writes already handed to \
                         the device, then cleaning up (a slow device can take a while; SIGKILL stops at once, and \
                         the next run sweeps what it leaves)"
                    );
                }
            })?;
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
