//! Ctrl-C, SIGTERM and SIGHUP for every long-running command: one flag the operation polls (the
//! engine's `Options::stop`, the export's cancel flag), the signal that set it, and the exit code
//! that reports it (128 + signal: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP).
//!
//! SIGHUP is what a command gets when its terminal goes away (an ssh session that drops): it
//! stops the run as SIGTERM does, with the same cleanup (the default action would kill the
//! process with an instance stopped and a staging directory left). A run started with SIGHUP
//! ignored (`nohup`, a service manager) keeps ignoring it.
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

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// How long after a signal a run that is still stopping says so.
pub const NOTICE_AFTER: Duration = Duration::from_secs(2);

/// The installed SIGINT/SIGTERM handlers and what they saw.
#[derive(Debug, Clone)]
pub struct Interrupt {
    flag: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl Interrupt {
    /// Installs the handlers for SIGINT and SIGTERM, and for SIGHUP unless it is ignored.
    pub fn install() -> io::Result<Self> {
        Self::install_with_notice(
            "waiting for the reads and writes already handed to the device, then cleaning up (a slow \
             device can take a while; SIGKILL stops at once, and the next run sweeps what it leaves)",
        )
    }

    /// [`Interrupt::install`] for a command whose stop waits for something else (the agent:
    /// its running calls and streams): `notice` says what, after "NAME: still stopping: ".
    pub fn install_with_notice(notice: &'static str) -> io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicUsize::new(0));
        let mut sigs = vec![SIGINT, SIGTERM];
        if !ignored(SIGHUP) {
            sigs.push(SIGHUP);
        }
        for &sig in &sigs {
            // The number first, then the flag: whoever sees the flag finds the signal set.
            signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)?;
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
        }
        // A signal that came between its two registrations set the number alone (the process
        // already showed the signal as caught): it stops the run all the same. Seen as a
        // SIGTERM sent the moment the handlers showed up, which the run then ignored (exit 0).
        if signal.load(Ordering::SeqCst) != 0 {
            flag.store(true, Ordering::SeqCst);
        }
        // A thread that sleeps in a read of signal-hook's pipe until the first signal.
        let mut signals = signal_hook::iterator::Signals::new(&sigs)?;
        std::thread::Builder::new()
            .name("interrupt-notice".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    std::thread::sleep(NOTICE_AFTER);
                    let name = name_of(sig);
                    errln!("diskstream: {name}: still stopping: {notice}");
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

    /// The signal's name for messages ("SIGINT", "SIGTERM", "SIGHUP").
    pub fn signal_name(&self) -> &'static str {
        name_of(self.signal().unwrap_or(SIGINT))
    }

    /// The exit code for an interrupted command: 128 + the signal (130 SIGINT, 143 SIGTERM,
    /// 129 SIGHUP).
    pub fn code(&self) -> u8 {
        128 + self.signal().unwrap_or(SIGINT) as u8
    }
}

fn name_of(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "SIGINT",
    }
}

/// Whether this process started with `sig` ignored (the `SigIgn` mask of `/proc/self/status`,
/// which `nohup` sets for SIGHUP).
fn ignored(sig: i32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}
